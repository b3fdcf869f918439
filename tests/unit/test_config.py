"""Config parsing: defaults, every table, and errors that name the TOML key."""

import pytest

from sso.config import ConfigError, SSOConfig, load_config, parse_config_text

ROOT_CONFIGS = ["configs/tiny.toml"]


def test_empty_config_gives_defaults():
    cfg = SSOConfig.from_dict(parse_config_text(""))
    assert cfg == SSOConfig()
    assert cfg.model.name == "sso-tiny" and cfg.policy.arms == ("sso", "pbaa")


@pytest.mark.parametrize("path", ROOT_CONFIGS)
def test_shipped_configs_parse(path):
    cfg = load_config(path)
    assert cfg.data.n_queries > 0 and cfg.sampling.shards >= 1


def test_round_trip_through_plain_dict():
    cfg = SSOConfig.from_dict(parse_config_text("[generator]\nbeta = 0.2\n[generator.lora]\nr = 4\n"))
    assert SSOConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.generator.beta == 0.2 and cfg.generator.lora.r == 4
    assert cfg.policy.lora.r == 8  # the other table keeps its default


@pytest.mark.parametrize("text, expected", [
    ("[sampling]\ntemprature = 0.7\n", "[sampling] unknown key 'temprature'; allowed: "),
    ("[samplng]\n", "top level unknown table 'samplng'; allowed: "),
    ("[generator.lora]\nrank = 8\n", "[generator.lora] unknown key 'rank'"),
    ("[generator]\nbeta = -1.0\n", "[generator] beta must be > 0, got -1.0"),
    ("[generator]\nloss = 'kto'\n", "[generator] loss must be one of: dpo, ipo, simpo, got 'kto'"),
    ("[sampling]\ntop_p = 1.5\n", "[sampling] top_p must be in (0, 1], got 1.5"),
    ("[data]\nn_queries = 'many'\n", "[data] n_queries must be an integer, got 'many'"),
    ("[data]\nn_queries = 4.5\n", "[data] n_queries must be an integer, got 4.5"),
    ("[run]\nseed = true\n", "[run] seed must be an integer, got True"),
    ("[policy]\narms = ['sso', 'ppo']\n", "[policy] arms must be a non-empty list of distinct arms"),
    ("[policy]\narms = []\n", "[policy] arms must be a non-empty list"),
    ("[judge]\napi_key_env = 'sk-abcdef'\n", "[judge] api_key_env must be the NAME"),
    ("[resources.sample]\ngpus = 1\n", "[resources.sample] unknown key 'gpus'"),
    ("[model]\ndtype = 'fp8'\n", "[model] dtype must be one of"),
    ("[data]\nn_queries = 4\nn_generator_queries = 8\n", "[data] n_generator_queries (8) must be <= n_queries (4)"),
    ("[data]\nn_queries = 2\n[sampling]\nshards = 3\n", "[sampling] shards (3) must be <= [data] n_queries (2)"),
    ("[sampling\n", "config is not valid TOML"),
])
def test_errors_name_the_key(text, expected):
    with pytest.raises(ConfigError) as exc:
        parse_config_text(text)
    assert expected in str(exc.value)


def test_float_fields_accept_integers():
    cfg = SSOConfig.from_dict(parse_config_text("[sampling]\ntemperature = 1\n"))
    assert cfg.sampling.temperature == 1.0 and isinstance(cfg.sampling.temperature, float)


def test_load_config_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[judge]\nbackend = 'gpt'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: \[judge\] backend must be one of: local, openai"):
        load_config(str(bad))


def test_replace_applies_dotted_overrides_and_revalidates():
    cfg = SSOConfig()
    assert cfg.replace(**{"run.seed": 7}).run.seed == 7
    with pytest.raises(ConfigError, match="unknown config key 'run.sed'"):
        cfg.replace(**{"run.sed": 7})
    with pytest.raises(ConfigError, match=r"\[data\] n_queries must be > 0"):
        cfg.replace(**{"data.n_queries": 0})


def test_vllm_tensor_parallel_size_follows_the_sampling_gpus():
    from sso.config import validate

    two = SSOConfig().replace(**{"sampling.backend": "vllm", "resources.sample.gpu": 2})
    with pytest.raises(ConfigError, match=r"tensor_parallel_size \(1\) must equal \[resources.sample\] gpu \(2\)"):
        validate(two)
    assert validate(two.replace(**{"sampling.tensor_parallel_size": 2})).sampling.tensor_parallel_size == 2
    validate(SSOConfig().replace(**{"sampling.backend": "transformers", "resources.sample.gpu": 2}))


def test_principles_resources_default_to_the_default_table():
    from sso.config import parse_config_text

    inherited = SSOConfig.from_dict(parse_config_text("[resources.default]\ncpu = 3\nmemory = 5000\n"))
    assert inherited.resources.principles == inherited.resources.default
    assert inherited.resources.principles.cpu == 3
    own = SSOConfig.from_dict(parse_config_text("[resources.default]\ncpu = 3\n[resources.principles]\ngpu = 1\n"))
    assert own.resources.principles.gpu == 1 and own.resources.principles.cpu == 1

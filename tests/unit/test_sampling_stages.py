"""The transformers sampler samples with exactly the configured parameters, seeded per stage."""

from __future__ import annotations

import json
import shutil

import pytest

from sso.generation.chat import render_prompt
from sso.generation.sampling import GenerationParams, TransformersSampler, request_seed

QUERIES = ["Name a colour.", "How do birds fly?", "Say hello.", "Count to three."]


@pytest.fixture(scope="module")
def sampler(tiny_model_path):
    s = TransformersSampler(tiny_model_path, dtype="float32", device="cpu", batch_size=4)
    yield s
    s.close()


@pytest.fixture(scope="module")
def penalised_model_path(tiny_model_path, tmp_path_factory):
    """The tiny model with a saved generation config that would change decoding if inherited."""
    out = tmp_path_factory.mktemp("penalised") / "model"
    shutil.copytree(tiny_model_path, out)
    path = out / "generation_config.json"
    gen = json.loads(path.read_text()) if path.exists() else {}
    gen.update(repetition_penalty=5.0, no_repeat_ngram_size=1, top_k=3)
    path.write_text(json.dumps(gen))
    return str(out)


def _prompts(tok):
    return [render_prompt(tok, q) for q in QUERIES]


def test_saved_generation_config_is_not_inherited(sampler, penalised_model_path, torch_single_thread):
    greedy = GenerationParams(greedy=True, max_new_tokens=12)
    other = TransformersSampler(penalised_model_path, dtype="float32", device="cpu", batch_size=4)
    try:
        assert other.model.generation_config.repetition_penalty in (None, 1.0)
        got = [c[0].text for c in other.generate(_prompts(other.tokenizer), greedy)]
    finally:
        other.close()
    want = [c[0].text for c in sampler.generate(_prompts(sampler.tokenizer), greedy)]
    assert got == want


def test_each_stage_has_its_own_random_stream(sampler, torch_single_thread):
    prompts = _prompts(sampler.tokenizer)
    sample = lambda stage: [c[0].text for c in sampler.generate(  # noqa: E731
        prompts, GenerationParams(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=7, stage=stage))]
    policy, again, generator = sample("principled"), sample("principled"), sample("generator")
    assert policy == again                      # reproducible within a stage
    assert sum(a != b for a, b in zip(policy, generator)) >= 3   # a new stream for another stage


def test_request_seed_depends_on_seed_stage_and_prompt():
    base = GenerationParams(seed=1, stage="principled")
    seeds = {request_seed(base, "a"), request_seed(base, "b"),
             request_seed(GenerationParams(seed=2, stage="principled"), "a"),
             request_seed(GenerationParams(seed=1, stage="generator"), "a")}
    assert len(seeds) == 4
    assert request_seed(base, "a") == request_seed(GenerationParams(seed=1, stage="principled"), "a")

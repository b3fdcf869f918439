"""Sharded fan-out: 3 shards give the same merged artifacts, in the same order, as 1 shard.

The step functions are called directly (no Metaflow), the way the flow calls them: plan_shards ->
sample_responses per shard -> join_samples, and generate_preferences per shard -> join_preferences,
with greedy decoding and the transformers sampler on the tiny model (one sampler for all shards).
"""

from __future__ import annotations

import pandas as pd
import pytest

from sso.config import SSOConfig
from sso.generation.shards import plan_shards, preference_shards
from steps.generate_preferences import generate_preferences
from steps.generate_principles import generate_principles
from steps.join_preferences import join_preferences
from steps.join_samples import join_samples
from steps.load_queries import load_queries
from steps.sample_responses import sample_responses

N_QUERIES, N_EVAL, N_GEN = 7, 4, 5   # 7 is not a multiple of 3: uneven shards


@pytest.fixture(scope="module")
def setup(tiny_model_path):
    import torch

    from sso.generation.sampling import TransformersSampler

    # One intra-op thread: a 2 M-parameter model gains nothing from more, and on a shared 2-core
    # machine a second spinning thread makes each generate call ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    cfg = SSOConfig().replace(**{
        "data.n_queries": N_QUERIES, "data.n_eval": N_EVAL, "data.n_generator_queries": N_GEN,
        "sampling.temperature": 0.0, "sampling.plain_greedy": True, "sampling.max_new_tokens": 8,
        "sampling.backend": "transformers", "eval.greedy": True, "eval.max_new_tokens": 8})
    queries, eval_queries, _ = load_queries(cfg.data, seed=cfg.run.seed)
    principles = generate_principles(queries, cfg)
    sampler = TransformersSampler(tiny_model_path, dtype="float32", device="cpu", batch_size=4)
    yield cfg, queries, eval_queries, principles, sampler
    sampler.close()
    torch.set_num_threads(threads)


def _run_samples(setup, n_shards, *, reverse=False):
    cfg, queries, eval_queries, principles, sampler = setup
    shards = plan_shards(queries, eval_queries, n_shards, principles=principles)
    results = [sample_responses(s, cfg, "unused", sampler=sampler) for s in shards]
    if reverse:   # a join sees its inputs in whatever order the tasks finished
        results = results[::-1]
    return shards, join_samples(results, queries)


def test_three_shards_equal_one_shard_for_greedy_sampling(setup):
    shards1, one = _run_samples(setup, 1)
    shards3, three = _run_samples(setup, 3)
    assert len(shards1) == 1 and len(shards3) == 3
    for key in ("sso_triples", "pbaa_pairs"):
        pd.testing.assert_frame_equal(one[key], three[key])
    pd.testing.assert_frame_equal(one["base_answers"], three["base_answers"])
    assert list(one["pbaa_pairs"]["query_id"]) == [
        q for q in setup[1]["query_id"] if q in set(one["pbaa_pairs"]["query_id"])]
    assert {**one["sampling_report"], "n_shards": 0} == {**three["sampling_report"], "n_shards": 0}
    assert one["sampling_report"]["n_shards"] == 1 and three["sampling_report"]["n_shards"] == 3
    assert one["sampling_report"]["n_train_queries"] == N_QUERIES
    assert one["sampling_report"]["n_generator_queries"] == N_GEN
    assert one["sampling_report"]["n_base_answers"] == N_EVAL


def test_join_restores_query_order_whatever_the_shard_order(setup):
    _, in_order = _run_samples(setup, 3)
    _, reversed_ = _run_samples(setup, 3, reverse=True)
    for key in ("sso_triples", "pbaa_pairs"):
        pd.testing.assert_frame_equal(in_order[key], reversed_[key])


def test_generate_preferences_three_shards_equal_one(setup):
    cfg, queries, eval_queries, principles, sampler = setup
    merged = {}
    for n in (1, 3):
        frames = [generate_preferences(s, {}, cfg, "unused", sampler=sampler)
                  for s in preference_shards(plan_shards(queries, None, n, principles=principles))]
        merged[n] = join_preferences(frames[::-1], queries)
    pd.testing.assert_frame_equal(merged[1][0], merged[3][0])
    assert list(merged[3][0]["query_id"]) == [q for q in queries["query_id"]
                                              if q in set(merged[3][0]["query_id"])]
    assert merged[1][1]["n_shards"] == 1 and merged[3][1]["n_shards"] == 3
    assert merged[1][1]["n_queries"] == merged[3][1]["n_queries"] == N_QUERIES


# ------------------------------------------------------------------ plan_shards (pure)

def _frame(n, prefix="q"):
    return pd.DataFrame({"query_id": [f"{prefix}{i}" for i in range(n)]})


@pytest.mark.parametrize("n_queries, n_eval, n_shards, shard_size, expected_sizes", [
    (7, 4, 3, 0, [3, 2, 2]),
    (7, 4, 1, 0, [7]),
    (2, 0, 5, 0, [1, 1]),          # never more shards than queries
    (10, 3, 1, 4, [4, 3, 3]),      # shard_size overrides shards: ceil(10/4) = 3 shards
    (10, 0, 99, 10, [10]),
    (10, 0, 1, 3, [3, 3, 2, 2]),
])
def test_plan_shards_sizes_and_coverage(n_queries, n_eval, n_shards, shard_size, expected_sizes):
    q, e = _frame(n_queries), _frame(n_eval, "e")
    shards = plan_shards(q, e, n_shards, shard_size=shard_size)
    assert [len(s["query_ids"]) for s in shards] == expected_sizes
    assert [i for s in shards for i in s["query_ids"]] == list(q["query_id"])   # contiguous, in order
    assert [i for s in shards for i in s["eval_ids"]] == list(e["query_id"])
    assert [s["index"] for s in shards] == list(range(len(shards)))
    if shard_size:
        assert max(expected_sizes) <= shard_size


def test_plan_shards_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_shards must be >= 1"):
        plan_shards(_frame(3), None, 0)
    with pytest.raises(ValueError, match="shard_size must be >= 0"):
        plan_shards(_frame(3), None, 1, shard_size=-1)


@pytest.mark.parametrize("path, n_shards", [("configs/qwen2.5-0.5b-gpu.toml", 1), ("configs/paper.toml", 30)])
def test_shipped_sampling_configs_parse_and_plan(path, n_shards):
    from pathlib import Path

    from sso.config import load_config

    cfg = load_config(str(Path(__file__).resolve().parents[2] / path))
    assert cfg.sampling.backend == "vllm" and cfg.principles.source == "model"
    queries = _frame(cfg.data.n_queries)
    shards = plan_shards(queries, None, cfg.sampling.shards, shard_size=cfg.sampling.shard_size)
    assert len(shards) == n_shards
    assert sum(len(s["query_ids"]) for s in shards) == cfg.data.n_queries

"""The eval split has its own seed: a seed sweep is judged on the same queries."""

import pandas as pd

from sso.config import SSOConfig
from sso.data.queries import split_queries
from steps.load_queries import load_queries


def _pool(n):
    return pd.DataFrame({"query_id": [f"q{i:03d}" for i in range(n)], "prompt": [f"p{i}" for i in range(n)]})


def test_eval_set_depends_on_eval_seed_only():
    df = _pool(60)
    splits = [split_queries(df, n_train=n, n_eval=10, seed=s, eval_seed=5) for s in range(4) for n in (20, 40)]
    evals = {tuple(e["query_id"]) for _, e in splits}
    assert len(evals) == 1                                   # same eval queries for every seed / size
    trains = {tuple(t["query_id"]) for t, _ in splits}
    assert len(trains) == len(splits)                        # the train sets do move
    for train, ev in splits:
        assert not set(train["query_id"]) & set(ev["query_id"])
    other = split_queries(df, n_train=20, n_eval=10, seed=0, eval_seed=6)[1]
    assert tuple(other["query_id"]) not in evals


def test_load_queries_keeps_the_eval_set_across_run_seeds():
    cfg = SSOConfig().replace(**{"data.n_queries": 16, "data.n_eval": 8})
    evals = {tuple(load_queries(cfg.data, seed=s)[1]["query_id"]) for s in (0, 1, 2)}
    assert len(evals) == 1

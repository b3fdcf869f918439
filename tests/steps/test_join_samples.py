"""join_samples / join_preferences: degenerate records are dropped *and counted*, order is kept."""

import pandas as pd
import pytest

from sso.generation.records import drop_reasons
from sso.generation.shards import plan_shards
from steps.join_preferences import join_preferences
from steps.join_samples import join_samples


def _queries(n, n_gen=None):
    n_gen = n if n_gen is None else n_gen
    return pd.DataFrame({"query_id": [f"q{i}" for i in range(n)], "prompt": [f"prompt {i}" for i in range(n)],
                         "generator": [i < n_gen for i in range(n)]})


def _records(q, ids):
    """The record columns a shard's rows carry (query_id, prompt, generator, principles)."""
    rows = q.set_index("query_id").loc[ids]
    return {"query_id": ids, "prompt": list(rows["prompt"]), "generator": list(rows["generator"]),
            "good_principle": "G", "bad_principle": "B"}


def _shard(q, ids, y_plus, y_minus, y_o):
    n = len(ids)
    samples = pd.DataFrame({**_records(q, ids), "y_plus": y_plus, "y_minus": y_minus, "y_o": y_o,
                            "y_plus_tokens": [3] * n, "y_minus_tokens": [4] * n, "y_o_tokens": [5] * n,
                            "y_plus_finish": ["stop"] * n, "y_minus_finish": ["length"] * n,
                            "y_o_finish": ["stop"] * n})
    base = pd.DataFrame({"query_id": [], "prompt": [], "answer": []})
    return {"samples": samples, "base_answers": base}


@pytest.mark.parametrize("y_plus, y_minus, y_o, expected", [
    ("a", "b", "c", []),
    ("a", "a", "c", ["y_plus_equals_y_minus"]),
    ("a", "b", "a", ["y_o_equals_principled"]),
    ("a", "b", "b", ["y_o_equals_principled"]),
    ("", "b", "c", ["empty_response"]),
    ("a", "b", "  ", ["empty_response"]),
    ("a", "b", None, []),
    ("x", "x", "x", ["y_plus_equals_y_minus", "y_o_equals_principled"]),
])
def test_drop_reasons(y_plus, y_minus, y_o, expected):
    assert drop_reasons(y_plus, y_minus, y_o) == expected


def test_join_drops_and_counts_every_reason_in_query_order():
    q = _queries(6, n_gen=5)
    shards = [
        _shard(q, ["q0", "q1", "q2"], ["a", "same", "p"], ["b", "same", "m"], ["c", "o", "p"]),
        _shard(q, ["q3", "q4", "q5"], ["", "p4", "p5"], ["m3", "m4", "p5"], ["o3", "o4", None]),
    ]
    out = join_samples(shards, q)
    rep = out["sampling_report"]
    assert list(out["sso_triples"].query_id) == ["q0", "q4"]
    assert list(out["pbaa_pairs"].query_id) == ["q0", "q2", "q4"]
    assert rep["triples_dropped_y_plus_equals_y_minus"] == 1
    assert rep["triples_dropped_y_o_equals_principled"] == 1
    assert rep["triples_dropped_empty_response"] == 1
    assert rep["pairs_dropped_y_plus_equals_y_minus"] == 2  # q1 and q5 (q5 is not a generator query)
    assert rep["pairs_dropped_empty_response"] == 1
    assert rep["n_sso_triples"] == 2 and rep["n_pbaa_pairs"] == 3
    assert rep["truncated_principled"] == 6  # every y- hit the length limit
    pairs = out["pbaa_pairs"]
    assert list(pairs.chosen) == ["a", "p", "p4"] and list(pairs.rejected) == ["b", "m", "m4"]


def test_join_refuses_missing_shard():
    q = _queries(4)
    shards = [_shard(q, ["q0", "q1"], ["a", "b"], ["c", "d"], ["e", "f"])]
    with pytest.raises(ValueError, match="joined 2 sampled queries but 4 were planned"):
        join_samples(shards, q)


def test_join_preferences_counts_and_keeps_order():
    q = _queries(4)
    fin = {"y_plus_finish": ["stop", "length"], "y_minus_finish": ["stop", "stop"]}
    frames = [pd.DataFrame({**_records(q, ["q2", "q3"]), "y_plus": ["a", "x"], "y_minus": ["b", "x"], **fin}),
              pd.DataFrame({**_records(q, ["q0", "q1"]), "y_plus": ["c", ""], "y_minus": ["d", "e"], **fin})]
    pairs, report = join_preferences(frames, q)
    assert list(pairs.query_id) == ["q0", "q2"]  # query order, not shard order
    assert list(pairs.columns[:4]) == ["query_id", "prompt", "chosen", "rejected"]
    assert report == {"n_queries": 4, "n_sso_pairs": 2, "n_shards": 2, "truncated_principled": 2,
                      "pairs_capped": 2, "pairs_dropped_y_plus_equals_y_minus": 1,
                      "pairs_dropped_empty_response": 1}
    assert list(pairs.chosen_finished) == [True, True] and list(pairs.rejected_finished) == [True, True]


def test_capped_responses_are_kept_unfinished_or_dropped_and_counted():
    q = _queries(4)
    shard = _shard(q, ["q0", "q1", "q2", "q3"], ["a", "b", "c", "d"], ["e", "f", "g", "h"], ["i", "j", "k", "l"])
    shard["samples"]["y_minus_finish"] = ["stop", "length", "stop", "stop"]
    shard["samples"]["y_o_finish"] = ["stop", "stop", "length", "stop"]
    kept = join_samples([shard], q)
    assert list(kept["pbaa_pairs"]["rejected_finished"]) == [True, False, True, True]
    assert list(kept["sso_triples"]["y_o_finished"]) == [True, True, False, True]
    assert kept["sampling_report"]["pairs_capped"] == 1 and kept["sampling_report"]["triples_capped"] == 2
    dropped = join_samples([shard], q, capped="drop")
    assert list(dropped["pbaa_pairs"]["query_id"]) == ["q0", "q2", "q3"]
    assert list(dropped["sso_triples"]["query_id"]) == ["q0", "q3"]
    assert dropped["sampling_report"]["pairs_dropped_capped"] == 1 and dropped["sampling_report"]["triples_dropped_capped"] == 2


@pytest.mark.parametrize("n_q, n_e, n_shards, sizes", [
    (10, 4, 3, [(4, 2), (3, 1), (3, 1)]),
    (2, 5, 4, [(1, 3), (1, 2)]),   # never more shards than train queries; evals still all covered
    (5, 0, 1, [(5, 0)]),
])
def test_plan_shards_is_contiguous_and_complete(n_q, n_e, n_shards, sizes):
    q, e = _queries(n_q), _queries(n_e)
    shards = plan_shards(q, e, n_shards)
    assert [(len(s["query_ids"]), len(s["eval_ids"])) for s in shards] == sizes
    assert sum((s["query_ids"] for s in shards), []) == list(q.query_id)
    assert sum((s["eval_ids"] for s in shards), []) == list(e.query_id)
    with pytest.raises(ValueError):
        plan_shards(q, e, 0)

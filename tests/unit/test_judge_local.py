"""The local judge and steps.judge on the tiny offline model (CPU, a few seconds)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sso.config import SSOConfig
from steps.judge import judge


@pytest.fixture(scope="module")
def tiny_judge():
    from sso.judge.local import LocalJudge

    return LocalJudge("sso-tiny", batch_size=4).load()


def _frames(n_eval=4, n_train=10):
    ans = pd.DataFrame({"query_id": [f"q{i}" for i in range(n_eval)],
                        "prompt": [f"Question number {i}?" for i in range(n_eval)],
                        "answer": [f"arm answer {i} " * (i + 1) for i in range(n_eval)]})
    base = ans.assign(answer=[f"base reply {i}" for i in range(n_eval)]).iloc[::-1]
    train = pd.DataFrame({"query_id": [f"t{i}" for i in range(n_train)],
                          "prompt": [f"train prompt {i}" for i in range(n_train)],
                          "chosen": [f"good {i}" for i in range(n_train)],
                          "rejected": [f"bad {i}" for i in range(n_train)]})
    return ans, base, train


def _cfg(tmp_path, **over):
    return SSOConfig().replace(**{"judge.cache_dir": str(tmp_path), "judge.accuracy_pairs": 6, **over})


def test_local_judge_gives_a_parsable_verdict_for_every_pair_and_order(tmp_path):
    ans, base, train = _frames()
    out = judge("sso", ans, base, train, _cfg(tmp_path), progress=False)
    j = out["judgments"]
    assert len(j) == 2 * (4 + 6)
    assert set(j["verdict"]) <= {"A", "B"} and j["verdict"].notna().all()
    assert (j["source"] == "local").all()
    assert j["logprob_a"].map(math.isfinite).all() and j["logprob_b"].map(math.isfinite).all()
    for (kind, idx), grp in j.groupby(["kind", "pair_index"]):
        assert sorted(grp["order"]) == [0, 1]
        assert sorted(grp["candidate_label"]) == ["A", "B"]
    m = out["metrics"]
    assert m["unparsable"] == 0 and m["pref_unparsable"] == 0
    assert m["wins"] + m["losses"] + m["ties"] == m["n_eval"] == 4
    assert 0.0 <= m["win_rate_ci_low"] <= m["win_rate"] <= m["win_rate_ci_high"] <= 1.0
    assert m["pref_accuracy_n"] == 6 and 0.0 <= m["pref_accuracy"] <= 1.0
    assert m["mean_answer_len"] == pytest.approx(ans["answer"].str.len().mean())
    assert m["base_mean_answer_len"] == pytest.approx(base["answer"].str.len().mean())
    assert out["usage"]["requests"] == 20 and out["usage"]["cache_hits"] == 0
    assert out["usage"]["est_cost_usd"] == 0.0
    # the verdict is the label with the larger log-prob, and the stored raw text is that label
    assert ((j["logprob_a"] > j["logprob_b"]) == (j["verdict"] == "A")).all()
    assert (j["raw"] == j["verdict"]).all()

    again = judge("sso", ans, base, train, _cfg(tmp_path), progress=False)
    assert again["usage"]["requests"] == 0 and again["usage"]["cache_hits"] == 20
    assert again["judgments"]["cached"].all()
    assert again["metrics"] == out["metrics"]


def test_accuracy_sample_is_seeded(tmp_path):
    from sso.judge.pairs import sample_train_pairs

    _, _, train = _frames(n_train=30)
    a = sample_train_pairs(train, 8, seed=3)
    assert a == sample_train_pairs(train, 8, seed=3)
    assert a != sample_train_pairs(train, 8, seed=4)
    assert len(sample_train_pairs(train, 500, seed=0)) == 30
    assert sample_train_pairs(train, 0, seed=0) == []


def test_batched_scores_equal_unbatched(tiny_judge):
    from sso.judge.prompts import JudgeParts

    jobs = [(f"k{i}", JudgeParts("q" * (i + 1), "x " * (3 * i + 1), "y")) for i in range(5)]
    batched, single = {}, {}
    tiny_judge.batch_size = 5
    tiny_judge.complete_many(jobs, lambda k, r: batched.__setitem__(k, r))
    tiny_judge.batch_size = 1
    tiny_judge.complete_many(jobs, lambda k, r: single.__setitem__(k, r))
    for k in batched:
        for lab in ("A", "B"):
            assert batched[k]["label_logprobs"][lab] == pytest.approx(
                single[k]["label_logprobs"][lab], abs=1e-4)


def test_overlong_prompt_is_truncated_to_the_context(tiny_judge):
    from sso.judge.prompts import JudgeParts

    long = "word " * 3000
    ids, truncated = tiny_judge.encode(JudgeParts("Question?", long, long))
    assert truncated and len(ids) <= tiny_judge._context_limit()
    got = {}
    tiny_judge.complete_many([("k", JudgeParts("Question?", long, "short"))],
                             lambda k, r: got.__setitem__(k, r))
    assert got["k"]["truncated"] and got["k"]["text"] in ("A", "B")


@pytest.mark.parametrize("mutate,match", [
    (lambda a, b, t: (a.drop(columns=["answer"]), b, t), "answers lacks column"),
    (lambda a, b, t: (a, b.iloc[1:], t), "different queries"),
    (lambda a, b, t: (pd.concat([a, a.iloc[:1]]), b, t), "duplicate query_id"),
    (lambda a, b, t: (a, b.assign(prompt="other"), t), "different prompt"),
    (lambda a, b, t: (a, b, t.drop(columns=["rejected"])), "train_pairs lacks column"),
])
def test_bad_inputs_are_rejected_before_any_judging(tmp_path, mutate, match):
    a, b, t = mutate(*_frames())
    with pytest.raises(ValueError, match=match):
        judge("sso", a, b, t, _cfg(tmp_path), progress=False)


def test_import_sso_judge_does_not_import_heavy_packages():
    import subprocess
    import sys

    code = ("import sys, sso.judge.protocol, sso.judge.transport, sso.judge.local, steps.judge,"
            " sso.judge.backends, sso.judge.pairs, sso.judge.metrics, sso.clients;"
            "bad=[m for m in ('openai','torch','transformers','metaflow') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_accuracy_sample_picks_the_same_queries_for_every_arm():
    from sso.judge.pairs import sample_train_pairs

    _, _, train = _frames(n_train=30)
    other_arm = train.assign(chosen="other", rejected="answers").iloc[::-1]   # same queries, other pairs
    ids = lambda pairs: sorted(p[0] for p in pairs)  # noqa: E731
    assert ids(sample_train_pairs(train, 8, seed=3)) == ids(sample_train_pairs(other_arm, 8, seed=3))
    fewer = train.drop(index=train.index[:5])                                 # an arm that dropped 5 pairs
    overlap = set(ids(sample_train_pairs(fewer, 8, seed=3))) & set(ids(sample_train_pairs(train, 8, seed=3)))
    assert len(overlap) >= 8 - 5

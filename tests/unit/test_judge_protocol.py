"""Protocol, aggregation, metrics and cache of sso.judge (no model, no network)."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import threading

import pytest

from sso.judge.cache import JudgeCache, compute_cache_key
from sso.judge.prompts import LABELS, PAIRWISE, PROMPT_VERSION, render_judge_messages
from sso.judge.protocol import (
    bootstrap_ci,
    build_requests,
    compute_pair_outcome,
    compute_pair_outcomes,
    compute_rate,
    run_judgments,
)


def test_prompt_has_named_placeholders_and_inserts_values_verbatim():
    for name in ("{instruction}", "{output_a}", "{output_b}"):
        assert name in PAIRWISE.user
    msgs = render_judge_messages("Q {x}", "first {y}", "second")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "Q {x}" in user and "first {y}" in user
    assert user.index("first {y}") < user.index("second")
    assert PROMPT_VERSION == PAIRWISE.version and PROMPT_VERSION


def test_both_orders_per_pair_swap_the_slots():
    reqs = build_requests("win_rate", [("q1", "inst", "ARM", "BASE"), ("q2", "i2", "x", "y")])
    assert [(r.query_id, r.order) for r in reqs] == [("q1", 0), ("q1", 1), ("q2", 0), ("q2", 1)]
    r0, r1 = reqs[0], reqs[1]
    assert (r0.output_a, r0.output_b, r0.candidate_label) == ("ARM", "BASE", "A")
    assert (r1.output_a, r1.output_b, r1.candidate_label) == ("BASE", "ARM", "B")
    assert r0.cache_key("j") != r1.cache_key("j")
    with pytest.raises(ValueError, match="unknown judgment kind"):
        build_requests("elo", [])


@pytest.mark.parametrize("wins,outcome", [
    ([True, True], "win"), ([False, False], "loss"), ([True, False], "tie"), ([False, True], "tie"),
    ([None, True], "unparsable"), ([False, None], "unparsable"), ([None, None], "unparsable"),
])
def test_pair_outcome_table(wins, outcome):
    assert compute_pair_outcome(wins) == outcome


def test_pair_outcome_needs_two_orders():
    with pytest.raises(ValueError, match="exactly two"):
        compute_pair_outcome([True])


def test_rate_counts_ties_half_and_excludes_unparsable():
    r = compute_rate(["win", "win", "loss", "tie", "unparsable", "unparsable"])
    assert (r["win"], r["loss"], r["tie"], r["unparsable"], r["n"], r["scored"]) == (2, 1, 1, 2, 6, 4)
    assert r["rate"] == pytest.approx((2 + 0.5) / 4)
    assert math.isnan(compute_rate(["unparsable"])["rate"])
    assert math.isnan(compute_rate([])["rate"])
    with pytest.raises(ValueError):
        compute_rate(["draw"])


def test_bootstrap_ci_is_seeded_and_brackets_the_rate():
    outcomes = ["win"] * 30 + ["loss"] * 10 + ["tie"] * 10 + ["unparsable"] * 5
    a = bootstrap_ci(outcomes, seed=1)
    assert a == bootstrap_ci(outcomes, seed=1)
    assert a != bootstrap_ci(outcomes, seed=2)
    rate = compute_rate(outcomes)["rate"]
    assert a[0] < rate < a[1]
    assert 0.0 <= a[0] and a[1] <= 1.0
    assert bootstrap_ci(["win"] * 5, seed=0) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci(["unparsable"], seed=0))


class FakeBackend:
    """Decides by a rule on the rendered user message; records what it was asked."""

    def __init__(self, rule, judge_id="fake:1"):
        self.rule, self.judge_id, self.asked = rule, judge_id, []

    def complete_many(self, jobs, on_done):
        for key, parts in jobs:
            user = render_judge_messages(*parts)[1]["content"]
            self.asked.append(user)
            on_done(key, {"text": self.rule(user), "forced": False})

    def usage(self):
        return {"requests": len(self.asked), "prompt_tokens": 0, "completion_tokens": 0,
                "est_cost_usd": 0.0}


def _slot_a(user: str) -> str:
    return user.split("# Reply A\n", 1)[1].split("\n\n# Reply B", 1)[0]


def test_agreement_disagreement_and_unparsable_are_scored(tmp_path):
    def rule(user):
        a = _slot_a(user)
        if "GOOD" in a:
            return "A"                 # always prefers GOOD -> agreement
        if "FIRST" in a or "SECOND" in a:
            return "A"                 # always prefers slot A -> disagreement across orders
        if "JUNK" in user:
            return "no idea"
        return "B"
    pairs = [("w", "i1", "GOOD", "meh"), ("l", "i2", "meh", "GOOD"), ("t", "i3", "FIRST", "SECOND"),
             ("u", "i4", "JUNK", "meh")]
    rows, usage = run_judgments(build_requests("win_rate", pairs), FakeBackend(rule),
                                JudgeCache(tmp_path))
    outcomes = {p["query_id"]: p["outcome"] for p in compute_pair_outcomes(rows)}
    assert outcomes == {"w": "win", "l": "loss", "t": "tie", "u": "unparsable"}
    unp = [r for r in rows if r["query_id"] == "u"]
    assert all(r["preferred"] == "unparsable" and r["verdict"] is None for r in unp)
    assert all(r["raw"] == "no idea" for r in unp)
    assert usage["requests"] == 8 and usage["cache_hits"] == 0


def test_rerun_is_served_from_cache_and_duplicates_are_asked_once(tmp_path):
    pairs = [("q1", "i", "x", "y"), ("q2", "i", "x", "y")]   # identical content: one key per order
    backend = FakeBackend(lambda u: "A")
    rows, usage = run_judgments(build_requests("win_rate", pairs), backend, JudgeCache(tmp_path))
    assert len(backend.asked) == 2 and len(rows) == 4
    assert [r["cached"] for r in rows] == [False, False, True, True]
    again = FakeBackend(lambda u: "B")
    rows2, usage2 = run_judgments(build_requests("win_rate", pairs), again, JudgeCache(tmp_path))
    assert again.asked == [] and usage2["cache_hits"] == 4
    assert [r["verdict"] for r in rows2] == ["A"] * 4      # the cached answers, not new ones
    other_judge = FakeBackend(lambda u: "B", judge_id="fake:2")
    run_judgments(build_requests("win_rate", pairs), other_judge, JudgeCache(tmp_path))
    assert len(other_judge.asked) == 2                      # the judge is part of the key


def test_failed_run_keeps_what_was_answered(tmp_path):
    class Flaky(FakeBackend):
        def complete_many(self, jobs, on_done):
            key, messages = jobs[0]
            on_done(key, {"text": "A"})
            raise RuntimeError("endpoint down")
    reqs = build_requests("win_rate", [("q", "i", "x", "y")])
    with pytest.raises(RuntimeError, match="endpoint down"):
        run_judgments(reqs, Flaky(lambda u: "A"), JudgeCache(tmp_path))
    second = FakeBackend(lambda u: "B")
    rows, usage = run_judgments(reqs, second, JudgeCache(tmp_path))
    assert len(second.asked) == 1 and usage["cache_hits"] == 1


def test_cache_key_covers_every_part():
    base = ("judge", "v1", "inst", "a", "b")
    key = compute_cache_key(*base)
    for i in range(len(base)):
        changed = list(base)
        changed[i] += "x"
        assert compute_cache_key(*changed) != key
    assert compute_cache_key("judge", "v1", "inst", "b", "a") != key     # order
    assert len(key) == 64


def test_cache_roundtrip_corrupt_entry_and_bad_key(tmp_path):
    cache = JudgeCache(tmp_path)
    key = compute_cache_key("j", "v", "i", "a", "b")
    assert cache.get(key) is None
    cache.put(key, {"text": "A", "label_logprobs": {"A": -0.1}})
    assert cache.get(key) == {"text": "A", "label_logprobs": {"A": -0.1}}
    cache.path_for(key).write_text("{truncated")
    assert cache.get(key) is None
    with pytest.raises(ValueError):
        cache.path_for("../../etc/passwd")


def _writer(root, n, tag):
    cache = JudgeCache(root)
    for i in range(n):
        cache.put(compute_cache_key("j", "v", "i", str(i), "b"), {"text": "A" * 2000, "i": i})


def test_cache_is_safe_for_concurrent_processes(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 40, t)) for t in range(3)]
    stop = threading.Event()
    torn = []

    def reader():
        cache = JudgeCache(tmp_path)
        while not stop.is_set():
            for i in range(40):
                path = cache.path_for(compute_cache_key("j", "v", "i", str(i), "b"))
                if path.exists():
                    try:
                        json.loads(path.read_text())
                    except (ValueError, FileNotFoundError) as exc:  # noqa: PERF203
                        torn.append(exc)
    t = threading.Thread(target=reader)
    t.start()
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    stop.set()
    t.join()
    assert all(p.exitcode == 0 for p in procs)
    assert torn == []
    assert len(JudgeCache(tmp_path)) == 40
    assert not list(tmp_path.glob("*/*.tmp"))


def test_labels_are_neutral():
    assert LABELS == ("A", "B")

"""Unit tests for sso.judge.rules (rule judge, accuracy and compliance with Wilson CIs)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sso.judge.protocol import OUTCOMES, compute_rate
from sso.judge.rules import (RULE_JUDGE_ID, RuleJudge, compliance_rate,
                             preference_accuracy_by_rule, wilson_interval)

SHORT = "Pump the tyre and check the valve."
LONG = " ".join(["Then you should carefully consider the many options available."] * 12)
PROTOCOL_ROW_KEYS = {"kind", "pair_index", "query_id", "order", "candidate_label", "raw",
                     "verdict", "preferred", "source", "logprob_a", "logprob_b", "cached",
                     "prompt_tokens", "completion_tokens", "judge", "prompt_version", "cache_key"}


@pytest.mark.parametrize("a,b,expected", [
    (SHORT, LONG, "A"), (LONG, SHORT, "B"), (SHORT, SHORT + " Done.", "tie"), (LONG, LONG, "tie"),
    ("", SHORT, "B"), ("", "", "tie"),
])
def test_verdicts_in_both_orders(a, b, expected):
    judge = RuleJudge()
    v = judge.judge("max_words_40", a, b)
    assert v.verdict == expected
    swapped = judge.judge("max_words_40", b, a).verdict
    assert swapped == {"A": "B", "B": "A", "tie": "tie"}[expected]
    assert v.reason.startswith("rule max_words_40") and v.reason.endswith(f"-> {expected}")
    assert judge.usage()["requests"] == 2


def test_verdict_fields_and_other_rules():
    v = RuleJudge().judge("open_in_short", "Sure, here it is.", "In short, yes.")
    assert (v.verdict, v.a_complies, v.b_complies, v.a_score, v.b_score) == ("B", False, True, 0.0, 1.0)
    assert "A does not comply" in v.reason and "B complies" in v.reason


def test_judge_rejects_bad_input():
    judge = RuleJudge()
    with pytest.raises(ValueError, match="unknown verifiable rule"):
        judge.judge("nope", "a", "b")
    with pytest.raises(ValueError, match="answer_b"):
        judge.judge("max_words_40", "a", None)
    with pytest.raises(ValueError, match="kind"):
        judge.judge_pairs("elo", [])


def test_judge_pairs_rows_match_the_protocol_format():
    pairs = [("q1", "max_words_40", SHORT, LONG), ("q2", "max_words_40", LONG, SHORT),
             ("q3", "say_because", "No reason.", "Still none.")]
    rows, outcomes = RuleJudge().judge_pairs("accuracy", pairs)
    assert len(rows) == 6
    assert all(set(r) == PROTOCOL_ROW_KEYS | {"rule_id"} for r in rows)
    assert [r["order"] for r in rows] == [0, 1] * 3
    assert [r["candidate_label"] for r in rows] == ["A", "B"] * 3
    assert [r["verdict"] for r in rows] == ["A", "B", "B", "A", "tie", "tie"]
    assert [r["preferred"] for r in rows] == ["chosen"] * 2 + ["rejected"] * 2 + ["tie"] * 2
    assert all(r["judge"] == RULE_JUDGE_ID and r["source"] == "rules" for r in rows)
    assert all(math.isnan(r["logprob_a"]) for r in rows)
    assert [o["outcome"] for o in outcomes] == ["win", "loss", "tie"]
    assert {o["outcome"] for o in outcomes} <= set(OUTCOMES)
    rate = compute_rate([o["outcome"] for o in outcomes])
    assert (rate["win"], rate["loss"], rate["tie"], rate["rate"]) == (1, 1, 1, 0.5)
    rows, _ = RuleJudge().judge_pairs("win_rate", pairs[:1])
    assert [r["preferred"] for r in rows] == ["arm", "arm"]


def test_wilson_interval_brackets_and_shrinks():
    widths = []
    for n in (10, 40, 160, 640):
        k = int(0.7 * n)
        low, high = wilson_interval(k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0
        widths.append(high - low)
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 4
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert 0.0 < wilson_interval(0, 10)[1] < 0.35      # zero successes still leaves room above
    assert wilson_interval(5, 10, 0.99)[0] < wilson_interval(5, 10, 0.8)[0]
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    for bad in [(11, 10, 0.95), (-1, 10, 0.95), (1, 10, 1.0), (1.5, 10, 0.95)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def _pairs(n_correct, n_reversed, n_both, n_neither, rule="max_words_40"):
    rows = ([(SHORT, LONG)] * n_correct + [(LONG, SHORT)] * n_reversed
            + [(SHORT, SHORT)] * n_both + [(LONG, LONG)] * n_neither)
    return pd.DataFrame({"prompt": ["p"] * len(rows), "chosen": [c for c, _ in rows],
                         "rejected": [r for _, r in rows], "rule_id": [rule] * len(rows)})


def test_preference_accuracy_by_rule_counts_ties_separately():
    df = pd.concat([_pairs(6, 1, 2, 1), _pairs(0, 0, 1, 1, rule="say_because")])
    out = preference_accuracy_by_rule(df)
    words = out["max_words_40"]
    assert (words["n"], words["correct"], words["reversed"]) == (10, 6, 1)
    assert (words["tie_both"], words["tie_neither"], words["ties"]) == (2, 1, 3)
    assert words["accuracy"] == pytest.approx(0.6)
    assert words["rate"] == pytest.approx((6 + 1.5) / 10)
    assert words["chosen_compliance"] == pytest.approx(0.8)
    assert words["ci_low"] <= 0.6 <= words["ci_high"]
    # SHORT and LONG both lack "because": two neither-ties
    assert (out["say_because"]["n"], out["say_because"]["tie_neither"]) == (2, 2)
    assert out["overall"]["n"] == 12 and out["overall"]["correct"] == 6


def test_preference_accuracy_ci_shrinks_with_n():
    small = preference_accuracy_by_rule(_pairs(3, 1, 0, 1))["max_words_40"]
    large = preference_accuracy_by_rule(_pairs(60, 20, 0, 20))["max_words_40"]
    assert small["accuracy"] == large["accuracy"] == pytest.approx(0.6)
    for s in (small, large):
        assert s["ci_low"] <= s["accuracy"] <= s["ci_high"]
    assert large["ci_high"] - large["ci_low"] < (small["ci_high"] - small["ci_low"]) / 2


def test_preference_accuracy_bad_input():
    with pytest.raises(ValueError, match="rejected"):
        preference_accuracy_by_rule(pd.DataFrame({"prompt": [], "chosen": [], "rule_id": []}))
    bad = _pairs(1, 0, 0, 0)
    bad.loc[0, "chosen"] = None
    with pytest.raises(ValueError, match="chosen in row 0"):
        preference_accuracy_by_rule(bad)
    empty = preference_accuracy_by_rule(_pairs(0, 0, 0, 0))
    assert empty["overall"]["n"] == 0 and math.isnan(empty["overall"]["accuracy"])


def test_compliance_rate():
    answers = [SHORT, SHORT, LONG, "In short, no.", "No."]
    rules = ["max_words_40"] * 3 + ["open_in_short"] * 2
    out = compliance_rate(answers, rules)
    assert (out["max_words_40"]["complied"], out["max_words_40"]["n"]) == (2, 3)
    assert out["max_words_40"]["rate"] == pytest.approx(2 / 3)
    assert 2 / 3 < out["max_words_40"]["mean_score"] < 1.0     # the long one scores partly
    assert out["open_in_short"]["rate"] == 0.5
    assert out["overall"]["complied"] == 3 and out["overall"]["n"] == 5
    for s in out.values():
        assert s["ci_low"] <= s["rate"] <= s["ci_high"]
    big = compliance_rate(answers * 20, rules * 20)["overall"]
    assert big["rate"] == out["overall"]["rate"]
    assert big["ci_high"] - big["ci_low"] < out["overall"]["ci_high"] - out["overall"]["ci_low"]
    with pytest.raises(ValueError, match="same length"):
        compliance_rate(answers, rules[:-1])
    with pytest.raises(ValueError, match="answer 0"):
        compliance_rate([None], ["max_words_40"])

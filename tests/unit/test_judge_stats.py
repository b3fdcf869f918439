"""LC win rate and paired head-to-head statistics (sso.judge.stats), on simulated judges."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sso.judge.protocol import bootstrap_ci, build_requests, compute_rate, judgment_row
from sso.judge.stats import (
    compute_bootstrap_ci,
    compute_length_deltas,
    compute_pair_scores,
    fit_length_logit,
    head_to_head,
    lc_win_rate,
    win_rate_difference,
)


def _rows(prefs: list[tuple[str, str]], ids: list[str] | None = None, kind: str = "win_rate",
          start: int = 0) -> list[dict]:
    """Judgment rows from per-pair (order 0, order 1) preferences ('arm' / 'base' / 'unparsable')."""
    ids = ids or [f"q{i}" for i in range(len(prefs))]
    return [{"kind": kind, "pair_index": start + i, "query_id": q, "order": o, "preferred": p}
            for i, (q, pair) in enumerate(zip(ids, prefs)) for o, p in enumerate(pair)]


def _answers(lengths, char: str = "x") -> list[dict]:
    return [{"query_id": f"q{i}", "answer": char * int(n)} for i, n in enumerate(lengths)]


def simulate(n: int, p0: float, gamma: float, *, mean_delta: float = 300.0, sd: float = 300.0,
             seed: int = 0, position_bias: float = 0.0):
    """A judge whose per-order preference for the arm is sigmoid(logit(p0) + gamma tanh(d / sd)
    ± position_bias): p0 is the length-free preference, gamma the length bias."""
    rng = np.random.default_rng(seed)
    base_len = rng.integers(1500, 2000, n)
    delta = np.round(rng.normal(mean_delta, sd, n)).astype(int)
    logit = math.log(p0 / (1 - p0)) + gamma * np.tanh(delta / sd)
    prefs = []
    for i in range(n):
        pair = []
        for sign in (1.0, -1.0):    # order 0 shows the arm first; a position bias favours slot A
            prob = 1.0 / (1.0 + math.exp(-(logit[i] + sign * position_bias)))
            pair.append("arm" if rng.random() < prob else "base")
        prefs.append(tuple(pair))
    return _rows(prefs), _answers(base_len + delta), _answers(base_len, "y")


@pytest.mark.parametrize("p0", [0.5, 0.65])
def test_lc_recovers_the_length_free_preference_when_the_judge_likes_long_answers(p0):
    judgments, answers, base = simulate(600, p0, gamma=1.5, seed=1, position_bias=0.4)
    r = lc_win_rate(judgments, answers, base, seed=0, n_boot=1000)
    assert r["reason"] == "" and r["converged"] and r["n"] == 600
    assert r["lc_win_rate_ci_low"] < p0 < r["lc_win_rate_ci_high"]
    assert r["win_rate"] > p0 + 0.1                       # the raw rate is inflated by length
    assert r["win_rate_ci_low"] > p0                      # ... and its CI excludes the truth
    assert r["length_coef_ci_low"] > 0.5                  # the fitted bias is clearly positive
    assert r["length_coef_ci_low"] < 1.5 < r["length_coef_ci_high"]
    assert r["mean_len_delta"] == pytest.approx(300, abs=40)
    assert r["length_scale"] == pytest.approx(300, rel=0.15)


def test_a_judge_that_only_counts_characters_is_neutral_after_length_control():
    """Real judgment rows (protocol requests and rows) from a judge that always picks the longer
    reply: the raw win rate is the share of longer arm answers, the LC one is about 0.5."""
    rng = np.random.default_rng(0)
    deltas = rng.integers(-100, 200, 60)
    deltas[deltas == 0] = 1
    ids = [f"q{i}" for i in range(60)]
    arm, base = ["y" * (300 + int(d)) for d in deltas], ["x" * 300] * 60
    rows = []
    for req in build_requests("win_rate", zip(ids, ids, arm, base)):
        text = "A" if len(req.output_a) > len(req.output_b) else "B"
        rows.append(judgment_row(req, {"text": text}, cached=False, key="k", judge_id="length"))
    answers = pd.DataFrame({"query_id": ids, "prompt": ids, "answer": arm})
    base_answers = pd.DataFrame({"query_id": ids, "prompt": ids, "answer": base})
    r = lc_win_rate(pd.DataFrame(rows), answers, base_answers, seed=0)
    assert r["win_rate"] == pytest.approx(float(np.mean(deltas > 0)))
    assert r["win_rate"] > 0.6
    assert r["lc_win_rate_ci_low"] < 0.5 < r["lc_win_rate_ci_high"]
    assert r["lc_win_rate"] == pytest.approx(0.5, abs=0.05)
    assert r["length_coef_ci_low"] > 3.0


def test_lc_ci_covers_the_truth_in_most_replications_while_raw_does_not():
    cover_lc = cover_raw = 0
    for s in range(20):
        r = lc_win_rate(*simulate(200, 0.5, 1.5, seed=100 + s), seed=s, n_boot=500)
        cover_lc += r["lc_win_rate_ci_low"] <= 0.5 <= r["lc_win_rate_ci_high"]
        cover_raw += r["win_rate_ci_low"] <= 0.5 <= r["win_rate_ci_high"]
    assert cover_lc >= 15          # nominal 19 of 20
    assert cover_raw <= 2


def test_without_length_bias_lc_matches_raw():
    # balanced lengths: the length feature averages zero, so LC and raw agree closely
    r = lc_win_rate(*simulate(600, 0.65, gamma=0.0, mean_delta=0.0, seed=2), seed=0, n_boot=1000)
    assert r["lc_win_rate"] == pytest.approx(r["win_rate"], abs=0.01)
    assert r["length_coef_ci_low"] < 0 < r["length_coef_ci_high"]
    # longer arm answers but a judge that ignores length: no correction beyond noise
    r = lc_win_rate(*simulate(600, 0.65, gamma=0.0, mean_delta=300.0, seed=3), seed=0, n_boot=1000)
    assert r["length_coef_ci_low"] < 0 < r["length_coef_ci_high"]
    assert r["lc_win_rate_ci_low"] < r["win_rate"] < r["lc_win_rate_ci_high"]
    assert abs(r["lc_win_rate"] - r["win_rate"]) < 0.05


def test_a_judge_that_dislikes_length_is_corrected_upwards():
    r = lc_win_rate(*simulate(600, 0.5, gamma=-1.0, seed=4), seed=0, n_boot=1000)
    assert r["length_coef_ci_high"] < 0
    assert r["win_rate"] < 0.42 and r["lc_win_rate_ci_low"] < 0.5 < r["lc_win_rate_ci_high"]


def test_lc_is_deterministic_under_a_seed_and_accepts_dataframes():
    judgments, answers, base = simulate(100, 0.6, 1.0, seed=5)
    a = lc_win_rate(judgments, answers, base, seed=7, n_boot=300)
    b = lc_win_rate(pd.DataFrame(judgments), pd.DataFrame(answers), pd.DataFrame(base), seed=7,
                    n_boot=300)
    assert a == b
    c = lc_win_rate(judgments, answers, base, seed=8, n_boot=300)
    assert c["lc_win_rate"] == a["lc_win_rate"]                       # the fit does not use the seed
    assert (c["lc_win_rate_ci_low"], c["lc_win_rate_ci_high"]) != (a["lc_win_rate_ci_low"],
                                                                    a["lc_win_rate_ci_high"])


def test_raw_figures_match_the_protocol_and_unparsable_and_other_kinds_are_left_out():
    judgments, answers, base = simulate(60, 0.6, 1.0, seed=6)
    judgments += _rows([("unparsable", "arm"), ("base", "unparsable")], ids=["u1", "u2"], start=60)
    judgments += _rows([("arm", "arm")] * 3, kind="accuracy")       # accuracy pairs: ignored
    r = lc_win_rate(judgments, answers, base, seed=3, n_boot=400)
    ids, outcomes, unparsable = compute_pair_scores(judgments)
    assert unparsable == 2 and r["unparsable"] == 2 and r["n"] == 60 == len(outcomes)
    assert "u1" not in ids
    assert r["win_rate"] == compute_rate(outcomes)["rate"]
    assert (r["win_rate_ci_low"], r["win_rate_ci_high"]) == bootstrap_ci(outcomes, seed=3, n_boot=400)


def test_generic_bootstrap_reproduces_the_protocol_bootstrap():
    outcomes = ["win"] * 13 + ["tie"] * 5 + ["loss"] * 9
    s = np.array([{"win": 1.0, "tie": 0.5, "loss": 0.0}[o] for o in outcomes])
    ci = compute_bootstrap_ci(s.size, lambda idx: s[idx].mean(1), seed=11, n_boot=700, level=0.9)
    assert tuple(float(v) for v in ci) == bootstrap_ci(outcomes, seed=11, n_boot=700, level=0.9)
    with pytest.raises(ValueError, match="0 < level < 1"):
        compute_bootstrap_ci(3, lambda idx: idx.mean(1), seed=0, level=1.5)


def _penalised_gradient(beta, x, y, w, l2):
    p = 1.0 / (1.0 + np.exp(-(beta[0] + beta[1] * x)))
    r = w * (y - p)
    return np.array([r.sum() - l2 * beta[0], r @ x - l2 * beta[1]])


def test_fit_solves_the_penalised_score_equations_even_on_separable_data():
    rng = np.random.default_rng(0)
    x = np.tanh(rng.normal(size=50))
    cases = {"fractional": rng.choice([0.0, 0.5, 1.0], size=50), "separable": (x > 0).astype(float)}
    for name, y in cases.items():
        beta, converged = fit_length_logit(x, y, np.ones((1, 50)), l2=0.1)
        assert converged, name
        assert np.all(np.isfinite(beta)), name
        assert np.abs(_penalised_gradient(beta[0], x, y, np.ones(50), 0.1)).max() < 1e-8, name
    # a zero feature: sigmoid(b0) is the mean target (up to the tiny ridge)
    y = cases["fractional"]
    beta, _ = fit_length_logit(np.zeros(50), y, np.ones((1, 50)), l2=1e-6)
    assert 1.0 / (1.0 + math.exp(-beta[0, 0])) == pytest.approx(y.mean(), abs=1e-6)
    with pytest.raises(ValueError, match="l2 must be > 0"):
        fit_length_logit(x, y, np.ones((1, 50)), l2=0.0)


def test_batched_count_weights_equal_duplicated_rows():
    rng = np.random.default_rng(1)
    x, y = np.tanh(rng.normal(size=20)), rng.choice([0.0, 0.5, 1.0], size=20)
    counts = rng.integers(0, 3, size=(4, 20)).astype(float)
    batched, _ = fit_length_logit(x, y, counts)
    for row, b in zip(counts, batched):
        keep = np.repeat(np.arange(20), row.astype(int))
        single, _ = fit_length_logit(x[keep], y[keep], np.ones((1, keep.size)))
        np.testing.assert_allclose(b, single[0], atol=1e-9)


DEGENERATE = [
    # (per-pair preferences, arm lengths, base lengths, reason fragment, lc equals raw)
    ([("arm", "arm"), ("base", "arm")], [10, 20], [5, 5], "only 2 scored pair", False),
    ([("arm", "arm")] * 4, [10, 20, 30, 40], [5] * 4, "are 'win'", True),
    ([("base", "base")] * 4, [10, 20, 30, 40], [5] * 4, "are 'loss'", True),
    ([("arm", "base")] * 4, [10, 20, 30, 40], [5] * 4, "are 'tie'", True),
    ([("arm", "arm"), ("base", "base"), ("arm", "base")], [15, 25, 35], [5, 15, 25],
     "+10 characters longer", False),
    ([], [], [], "only 0 scored pair", False),
    ([("unparsable", "arm")] * 3, [10, 20, 30], [5] * 3, "only 0 scored pair", False),
]


@pytest.mark.parametrize("prefs,arm_len,base_len,reason,equals_raw", DEGENERATE)
def test_degenerate_inputs_give_nan_intervals_and_a_reason(prefs, arm_len, base_len, reason,
                                                           equals_raw):
    r = lc_win_rate(_rows(prefs), _answers(arm_len), _answers(base_len, "y"), seed=0, n_boot=200)
    assert reason in r["reason"]
    assert math.isnan(r["lc_win_rate_ci_low"]) and math.isnan(r["lc_win_rate_ci_high"])
    assert math.isnan(r["length_coef"])
    if equals_raw:
        assert r["lc_win_rate"] == r["win_rate"]
    else:
        assert math.isnan(r["lc_win_rate"])


def test_no_length_differences_reports_the_raw_rate_and_interval():
    prefs = [("arm", "arm"), ("base", "base"), ("arm", "base"), ("arm", "arm")]
    r = lc_win_rate(_rows(prefs), _answers([7] * 4), _answers([7] * 4, "y"), seed=0, n_boot=200)
    assert "no length differences" in r["reason"]
    assert r["lc_win_rate"] == r["win_rate"] == pytest.approx(0.625)
    assert (r["lc_win_rate_ci_low"], r["lc_win_rate_ci_high"]) == (r["win_rate_ci_low"],
                                                                    r["win_rate_ci_high"])


def test_bad_inputs_raise_with_what_was_expected():
    rows, answers, base = _rows([("arm", "base")] * 3), _answers([1, 2, 3]), _answers([1, 1, 1])
    with pytest.raises(ValueError, match="lacks column"):
        lc_win_rate([{k: v for k, v in r.items() if k != "preferred"} for r in rows], answers, base,
                    seed=0)
    with pytest.raises(ValueError, match=r"base_answers lacks judged query_id\(s\) \['q2'\]"):
        compute_length_deltas(["q0", "q1", "q2"], answers, base[:2])
    with pytest.raises(ValueError, match="more than one win_rate pair"):
        lc_win_rate(_rows([("arm", "base")] * 2, ids=["q0", "q0"]), answers, base, seed=0)
    with pytest.raises(ValueError, match="exactly two orders"):
        lc_win_rate(rows[:-1], answers, base, seed=0)


def test_head_to_head_is_the_tie_half_preference_with_the_protocol_interval():
    prefs = [("arm", "arm")] * 12 + [("base", "base")] * 5 + [("arm", "base")] * 6 + \
            [("unparsable", "base")]
    r = head_to_head(_rows(prefs), seed=4, n_boot=500)
    assert (r["wins"], r["losses"], r["ties"], r["n"], r["unparsable"]) == (12, 5, 6, 23, 1)
    assert r["preference"] == pytest.approx((12 + 3) / 23)
    outcomes = ["win"] * 12 + ["loss"] * 5 + ["tie"] * 6
    assert (r["ci_low"], r["ci_high"]) == bootstrap_ci(outcomes, seed=4, n_boot=500)
    assert r["ci_low"] < r["preference"] < r["ci_high"] and r["reason"] == ""
    empty = head_to_head([], seed=0)
    assert math.isnan(empty["preference"]) and math.isnan(empty["ci_low"]) and empty["reason"]


def _two_arms(n: int, seed: int, effect: float = 0.4, spread: float = 2.0):
    """Two arms judged vs the same base; a shared per-query difficulty correlates their scores."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, spread, n)
    tables = []
    for shift in (effect, 0.0):
        prob = 1.0 / (1.0 + np.exp(-(u + shift)))
        tables.append(_rows([tuple("arm" if rng.random() < p else "base" for _ in range(2))
                             for p in prob]))
    return tables


def test_paired_interval_is_narrower_than_unpaired_on_correlated_arms():
    a, b = _two_arms(300, seed=0)
    paired = win_rate_difference(a, b, seed=1)
    unpaired = win_rate_difference(a, b, seed=1, paired=False)
    assert paired["difference"] == unpaired["difference"]
    assert paired["difference"] == pytest.approx(
        compute_rate(compute_pair_scores(a)[1])["rate"]
        - compute_rate(compute_pair_scores(b)[1])["rate"])
    width_p = paired["ci_high"] - paired["ci_low"]
    width_u = unpaired["ci_high"] - unpaired["ci_low"]
    assert width_p < 0.8 * width_u
    assert paired["ci_low"] < paired["difference"] < paired["ci_high"]
    assert paired["ci_low"] > 0                      # arm A is better, and pairing shows it
    assert win_rate_difference(a, b, seed=1) == paired


def test_difference_of_an_arm_with_itself_is_exactly_zero_when_paired():
    a, _ = _two_arms(50, seed=2)
    r = win_rate_difference(a, a, seed=0, n_boot=300)
    assert (r["difference"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0)


def test_difference_drops_queries_unparsable_for_either_arm_and_checks_the_query_sets():
    a = _rows([("arm", "arm"), ("unparsable", "arm"), ("base", "base"), ("arm", "base")])
    b = _rows([("base", "base"), ("arm", "arm"), ("base", "base"), ("unparsable", "unparsable")])
    r = win_rate_difference(a, b, seed=0, n_boot=200)
    assert (r["n"], r["dropped"]) == (2, 2)
    assert (r["win_rate_a"], r["win_rate_b"], r["difference"]) == (0.5, 0.0, 0.5)
    with pytest.raises(ValueError, match=r"only in a: \['q3'\]"):
        win_rate_difference(a, b[:-2], seed=0)
    none = win_rate_difference(a[2:4], b[2:4], seed=0)
    assert none["n"] == 0 and math.isnan(none["ci_low"]) and none["reason"]

"""Statistics over pairwise judgments: length-controlled win rate and paired head-to-head figures.

Inputs are the tables :func:`steps.judge.judge` produces, as pandas DataFrames or lists of row dicts:

- ``judgments``: one row per (pair, order) with at least ``kind``, ``pair_index``, ``query_id``,
  ``order`` and ``preferred`` (``arm`` / ``base`` / ``unparsable`` for kind ``win_rate``). Rows of
  other kinds are ignored. A pair's two orders are aggregated by the protocol's rule (both orders
  prefer the arm: win 1; both the base: loss 0; they disagree: tie 0.5; any unparsable order:
  unparsable, left out of every figure and counted).
- ``answers`` / ``base_answers``: ``query_id, answer``; lengths are counted in characters.

Every interval is a seeded percentile bootstrap over queries drawn exactly as
:func:`sso.judge.protocol.bootstrap_ci` draws it (same generator, same index matrix): for a mean
statistic and the same seed it reproduces that interval, and a statistic of two arms uses one
index matrix for both (paired).

Length-controlled (LC) win rate. For scored pair ``i`` with score ``y_i`` in {0, 0.5, 1}::

    P(arm preferred | i) = sigmoid(b0 + b1 * tanh(d_i / s)),   d_i = len(arm_i) - len(base_i),

``s`` the sample standard deviation (ddof 1) of ``d`` over the scored pairs, not centred, so zero
length difference stays at zero. ``y_i`` is a fractional target, the mean of the pair's two
per-order binary preferences (a tie is 0.5): the same fit as a logistic regression on the single
judgments, whose two rows per pair share ``d_i``, with the ridge halved. The penalised log-likelihood
``sum_i w_i [y_i log p_i + (1 - y_i) log(1 - p_i)] - l2 / 2 * (b0^2 + b1^2)`` is maximised by Newton
steps (capped at ``MAX_STEP`` logits). The LC win rate is ``sigmoid(b0)``: the predicted preference
at equal lengths. AlpacaEval 2's instruction-difficulty term and its regularisation towards
length-gamed baselines need data from a hub and are omitted, so ``b0`` is one quality term shared
by every query. The bootstrap refits on each resample with ``s`` held at its full-sample value.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

import numpy as np

from sso.judge.protocol import SCORES, bootstrap_ci, compute_bootstrap_ci, compute_pair_outcomes, compute_rate

JUDGMENT_COLUMNS = ("kind", "pair_index", "query_id", "order", "preferred")
ANSWER_COLUMNS = ("query_id", "answer")
MIN_PAIRS = 3          # fewer scored pairs than this: no LC fit
DEFAULT_L2 = 0.1       # ridge on (b0, b1): a N(0, 10) prior; keeps separable data finite
MAX_STEP = 5.0         # largest Newton step per coefficient, in logits
LC_KEYS = ("lc_win_rate", "lc_win_rate_ci_low", "lc_win_rate_ci_high", "intercept", "length_coef",
           "length_coef_ci_low", "length_coef_ci_high", "length_scale")


def _records(table: Any, name: str, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = table.to_dict("records") if hasattr(table, "to_dict") else [dict(r) for r in table]
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"{name} row {i} lacks column(s) {missing}; expected {list(columns)}")
    return rows


def _win_rate_pairs(table: Any, name: str) -> list[dict[str, Any]]:
    """The ``win_rate`` pairs of a judgments table with their outcomes; one pair per query."""
    rows = [r for r in _records(table, name, JUDGMENT_COLUMNS) if r["kind"] == "win_rate"]
    pairs = compute_pair_outcomes(rows)
    dup = sorted(q for q, k in Counter(str(p["query_id"]) for p in pairs).items() if k > 1)
    if dup:
        raise ValueError(f"{name}: query_id(s) {dup[:5]} have more than one win_rate pair; "
                         f"expected one pair per query")
    return pairs


def compute_pair_scores(judgments: Any) -> tuple[list[str], list[str], int]:
    """(query ids, outcomes ``win``/``tie``/``loss``) of the scored ``win_rate`` pairs in pair
    order, and the number of unparsable pairs left out. Raises if a query has two pairs."""
    pairs = _win_rate_pairs(judgments, "judgments")
    scored = [p for p in pairs if p["outcome"] in SCORES]
    return ([str(p["query_id"]) for p in scored], [p["outcome"] for p in scored],
            len(pairs) - len(scored))


def _lengths(answers: Any, name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in _records(answers, name, ANSWER_COLUMNS):
        a = row["answer"]
        text = "" if a is None or (isinstance(a, float) and math.isnan(a)) else str(a)
        qid = str(row["query_id"])
        if qid in out and out[qid] != len(text):
            raise ValueError(f"{name}: query_id {qid!r} appears twice with different answers")
        out[qid] = len(text)
    return out


def compute_length_deltas(query_ids: list[str], answers: Any, base_answers: Any) -> np.ndarray:
    """``len(answer) - len(base answer)`` in characters for each query id, shape (n,)."""
    arm, base = _lengths(answers, "answers"), _lengths(base_answers, "base_answers")
    for name, lengths in (("answers", arm), ("base_answers", base)):
        missing = [q for q in query_ids if q not in lengths]
        if missing:
            raise ValueError(f"{name} lacks judged query_id(s) {missing[:5]}; expected an answer "
                             f"for every judged query")
    return np.array([arm[q] - base[q] for q in query_ids], dtype=float)


def fit_length_logit(x: np.ndarray, y: np.ndarray, weights: np.ndarray, *, l2: float = DEFAULT_L2,
                     max_iter: int = 100, tol: float = 1e-10) -> tuple[np.ndarray, bool]:
    """Penalised logistic fit of ``y ~ sigmoid(b0 + b1 x)`` for every row of ``weights`` at once.

    x, y: shape (n,), y in [0, 1] (fractional targets allowed); weights: shape (B, n), >= 0 (one
    row of ones for a plain fit, bootstrap counts for B refits). Returns (beta of shape (B, 2) as
    [b0, b1], whether every fit converged).
    """
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0 (it keeps separable data finite), got {l2}")
    beta = np.zeros((weights.shape[0], 2))
    for _ in range(max_iter):
        p = np.exp(-np.logaddexp(0.0, -(beta[:, :1] + beta[:, 1:] * x)))          # (B, n)
        r, h = weights * (y - p), weights * p * (1.0 - p)
        g0, g1 = r.sum(1) - l2 * beta[:, 0], r @ x - l2 * beta[:, 1]                # (B,)
        h00, h01, h11 = h.sum(1) + l2, h @ x, h @ (x * x) + l2
        det = h00 * h11 - h01 * h01                                                 # > 0
        step = np.stack([(h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det], axis=1)
        size = np.abs(step).max(axis=1, keepdims=True)
        beta += step * np.minimum(1.0, MAX_STEP / np.maximum(size, 1e-300))
        if size.max() < tol:
            return beta, True
    return beta, False


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Bootstrap index matrix (B, n) -> how often each item was drawn, (B, n)."""
    offsets = idx + n * np.arange(idx.shape[0])[:, None]
    return np.bincount(offsets.ravel(), minlength=idx.size).reshape(idx.shape).astype(float)


def _degenerate_lc(y: np.ndarray, delta: np.ndarray, outcomes: list[str],
                   raw: dict[str, Any]) -> dict[str, Any] | None:
    """The LC fields for inputs the model cannot be fitted on (with a ``reason``), else None."""
    n = y.size
    if n < MIN_PAIRS:
        return {"reason": f"only {n} scored pair(s); the LC fit needs at least {MIN_PAIRS}"}
    if np.all(y == y[0]):
        return {"lc_win_rate": raw["win_rate"],
                "reason": f"all {n} scored pairs are '{outcomes[0]}': the length term is not "
                          f"identifiable; LC win rate set to the raw one"}
    if np.all(delta == delta[0]) and delta[0] == 0:
        return {"lc_win_rate": raw["win_rate"], "lc_win_rate_ci_low": raw["win_rate_ci_low"],
                "lc_win_rate_ci_high": raw["win_rate_ci_high"],
                "reason": "no length differences: the LC win rate equals the raw one"}
    if np.all(delta == delta[0]):
        return {"reason": f"every arm answer is {delta[0]:+.0f} characters longer than its base "
                          f"answer: quality and length cannot be separated"}
    return None


def lc_win_rate(judgments: Any, answers: Any, base_answers: Any, *, seed: int, n_boot: int = 2000,
                level: float = 0.95, l2: float = DEFAULT_L2) -> dict[str, Any]:
    """Length-controlled win rate of the arm over the base (model in the module docstring).

    judgments: the judge step's table (columns ``JUDGMENT_COLUMNS``); answers, base_answers:
    ``query_id, answer`` covering every judged query. Returns floats lc_win_rate and its
    lc_win_rate_ci_low/high, the raw win_rate with win_rate_ci_low/high (the protocol's bootstrap),
    intercept (b0), length_coef (b1, per unit of tanh(d / s)) with length_coef_ci_low/high,
    length_scale (s, characters), mean_len_delta (characters); ints n (scored pairs), unparsable;
    converged (bool); reason ("" when fitted, else why the LC figures are NaN or copied from raw).
    Degenerate inputs never raise.
    """
    ids, outcomes, unparsable = compute_pair_scores(judgments)
    delta = compute_length_deltas(ids, answers, base_answers)
    y = np.array([SCORES[o] for o in outcomes], dtype=float)
    low, high = bootstrap_ci(outcomes, seed=seed, n_boot=n_boot, level=level)
    out: dict[str, Any] = {**{k: math.nan for k in LC_KEYS}, "win_rate": compute_rate(outcomes)["rate"],
                           "win_rate_ci_low": low, "win_rate_ci_high": high,
                           "mean_len_delta": float(delta.mean()) if delta.size else math.nan,
                           "n": int(y.size), "unparsable": unparsable, "converged": False, "reason": ""}
    degenerate = _degenerate_lc(y, delta, outcomes, out)
    if degenerate is not None:
        return {**out, **degenerate}
    scale = float(delta.std(ddof=1))
    x = np.tanh(delta / scale)
    beta, converged = fit_length_logit(x, y, np.ones((1, y.size)), l2=l2)

    def refit(idx: np.ndarray) -> np.ndarray:
        b, _ = fit_length_logit(x, y, _counts(idx, y.size), l2=l2)
        return np.column_stack([1.0 / (1.0 + np.exp(-b[:, 0])), b[:, 1]])

    ci = compute_bootstrap_ci(y.size, refit, seed=seed, n_boot=n_boot, level=level)
    b0, b1 = (float(v) for v in beta[0])
    return {**out, "lc_win_rate": 1.0 / (1.0 + math.exp(-b0)), "lc_win_rate_ci_low": float(ci[0, 0]),
            "lc_win_rate_ci_high": float(ci[1, 0]), "intercept": b0, "length_coef": b1,
            "length_coef_ci_low": float(ci[0, 1]), "length_coef_ci_high": float(ci[1, 1]),
            "length_scale": scale, "converged": bool(converged)}


def head_to_head(judgments: Any, *, seed: int, n_boot: int = 2000, level: float = 0.95) -> dict[str, Any]:
    """Mean preference of arm A over arm B on the same queries, judged in both orders.

    judgments: a ``win_rate`` judgments table whose pairs were built with arm A's answer as the
    candidate and arm B's as the other (``build_requests("win_rate", [(qid, prompt, a, b), ...])``),
    so ``preferred == "arm"`` means A. Returns preference (win 1, tie 0.5, loss 0, mean over scored
    pairs) with ci_low/ci_high (the protocol's bootstrap over pairs: both orders of a query move
    together), wins, losses, ties, n (scored), unparsable, reason ("" unless nothing was scored).
    """
    _, outcomes, unparsable = compute_pair_scores(judgments)
    rate = compute_rate(outcomes)
    low, high = bootstrap_ci(outcomes, seed=seed, n_boot=n_boot, level=level)
    return {"preference": rate["rate"], "ci_low": low, "ci_high": high, "wins": rate["win"],
            "losses": rate["loss"], "ties": rate["tie"], "n": rate["scored"], "unparsable": unparsable,
            "reason": "" if outcomes else "no scored pairs"}


def win_rate_difference(judgments_a: Any, judgments_b: Any, *, seed: int, n_boot: int = 2000,
                        level: float = 0.95, paired: bool = True) -> dict[str, Any]:
    """Win rate vs base of arm A minus that of arm B, on the queries both were judged on.

    judgments_a, judgments_b: each arm's judgments table against the same base answers, covering
    the same query ids (else ValueError). A query unparsable for either arm is left out of both
    (counted in ``dropped``). ``paired``: resample the same queries for both arms (the default);
    False resamples them independently (for comparison). Returns win_rate_a, win_rate_b, difference,
    ci_low, ci_high, n (queries used), dropped, paired, reason ("" unless no query was usable).
    """
    scores = []
    for name, table in (("judgments_a", judgments_a), ("judgments_b", judgments_b)):
        scores.append({str(p["query_id"]): SCORES.get(p["outcome"])
                       for p in _win_rate_pairs(table, name)})
    if set(scores[0]) != set(scores[1]):
        only_a, only_b = sorted(set(scores[0]) - set(scores[1])), sorted(set(scores[1]) - set(scores[0]))
        raise ValueError(f"judgments_a and judgments_b cover different queries (only in a: "
                         f"{only_a[:5]}; only in b: {only_b[:5]}); expected the same query ids")
    keep = [q for q in scores[0] if scores[0][q] is not None and scores[1][q] is not None]
    a, b = (np.array([s[q] for q in keep], dtype=float) for s in scores)
    out = {"win_rate_a": math.nan, "win_rate_b": math.nan, "difference": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "n": len(keep), "dropped": len(scores[0]) - len(keep),
           "paired": paired, "reason": "" if keep else "no query scored for both arms"}
    if not keep:
        return out
    # unpaired: arm B takes the indices drawn for the previous replicate (an independent draw)
    shift = 0 if paired else 1
    ci = compute_bootstrap_ci(len(keep), lambda idx: a[idx].mean(1) - b[np.roll(idx, shift, 0)].mean(1),
                              seed=seed, n_boot=n_boot, level=level)
    return {**out, "win_rate_a": float(a.mean()), "win_rate_b": float(b.mean()),
            "difference": float(a.mean() - b.mean()), "ci_low": float(ci[0]), "ci_high": float(ci[1])}

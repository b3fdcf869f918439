"""A rule judge for verifiable principles: compliance decides, no judge model is asked.

For a pair of answers to one query under a verifiable rule (:mod:`sso.data.verifiable`), the
answer that complies with the rule's GOOD principle beats the one that does not; when both or
neither comply the verdict is a tie. The judge is deterministic and blind to the order of the
answers, so it has no position bias by construction.

How this maps onto the LM judge's records (:mod:`sso.judge.protocol`, :mod:`sso.judge.parse`)
    - A verdict is ``"A"`` / ``"B"`` (the labels of :data:`sso.judge.prompts.LABELS`, as
      ``parse_verdict`` returns them) or ``"tie"``, which the LM judge has no per-order word for.
    - ``RuleJudge.judge_pairs`` returns judgment rows with exactly the keys of
      ``protocol.judgment_row`` plus ``rule_id``: ``raw`` is the reason string, ``source`` is
      ``"rules"``, ``preferred`` is the role (``chosen``/``rejected`` or ``arm``/``base``) or
      ``"tie"``, label log-probs are NaN, token counts 0, ``cached`` False, ``judge`` is
      :data:`RULE_JUDGE_ID`, ``prompt_version`` the catalogue version and ``cache_key`` empty.
    - Pair outcomes use ``protocol.OUTCOMES``: compliant candidate -> ``win``, compliant other ->
      ``loss``, both/neither -> ``tie``. Both orders always agree. ``unparsable`` never occurs:
      an unknown rule or an answer that is not a str raises ``ValueError`` instead. The outcome
      lists feed ``protocol.compute_rate`` (tie as half) and ``protocol.bootstrap_ci`` unchanged.

Confidence intervals here are Wilson score intervals (exact-coverage-like for a proportion, never
outside [0, 1], always containing the point estimate, narrower as n grows); NaN for n = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Iterable

import pandas as pd

from sso.data.verifiable import VERIFIABLE_VERSION, get_rule
from sso.judge.prompts import LABELS
from sso.judge.protocol import KINDS, ROLES

__all__ = ["RULE_JUDGE_ID", "TIE", "OVERALL", "RuleVerdict", "RuleJudge", "wilson_interval",
           "preference_accuracy_by_rule", "compliance_rate"]

RULE_JUDGE_ID = f"rules:{VERIFIABLE_VERSION}"
TIE = "tie"
OVERALL = "overall"


@dataclass(frozen=True)
class RuleVerdict:
    """One rule-judged comparison: ``verdict`` in ("A", "B", "tie") and the reason as raw text."""

    rule_id: str
    verdict: str
    reason: str
    a_complies: bool
    b_complies: bool
    a_score: float
    b_score: float


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {type(value).__name__}")
    return value


def _describe(label: str, complies: bool, score: float) -> str:
    return f"{label} {'complies' if complies else 'does not comply'} (score {score:.2f})"


class RuleJudge:
    """Judges answer pairs by compliance with a verifiable rule (see the module docstring)."""

    judge_id = RULE_JUDGE_ID

    def __init__(self) -> None:
        self._requests = 0

    def judge(self, rule_id: str, answer_a: str, answer_b: str) -> RuleVerdict:
        """The verdict for ``answer_a`` (label A) vs ``answer_b`` (label B) under ``rule_id``."""
        rule = get_rule(rule_id)
        a, b = _text(answer_a, "answer_a"), _text(answer_b, "answer_b")
        a_ok, b_ok = bool(rule.check(a)), bool(rule.check(b))
        a_score, b_score = float(rule.score(a)), float(rule.score(b))
        verdict = LABELS[0] if a_ok and not b_ok else LABELS[1] if b_ok and not a_ok else TIE
        reason = (f"rule {rule_id} ({rule.how}): {_describe(LABELS[0], a_ok, a_score)}; "
                  f"{_describe(LABELS[1], b_ok, b_score)} -> {verdict}")
        self._requests += 1
        return RuleVerdict(rule_id, verdict, reason, a_ok, b_ok, a_score, b_score)

    def judge_pairs(self, kind: str, pairs: Iterable[tuple[str, str, str, str]]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Both orders of every ``(query_id, rule_id, candidate, other)``.

        Returns (judgment rows, two per pair, in ``protocol.judgment_row``'s format plus
        ``rule_id``; pair outcome rows ``{kind, pair_index, query_id, rule_id, outcome}``).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown judgment kind {kind!r}; expected one of {KINDS}")
        cand_role, other_role = ROLES[kind]
        rows, outcomes = [], []
        for i, (qid, rule_id, candidate, other) in enumerate(pairs):
            preferred = []
            for order in (0, 1):
                a, b = (candidate, other) if order == 0 else (other, candidate)
                v = self.judge(rule_id, a, b)
                cand_label = LABELS[order]
                role = TIE if v.verdict == TIE else cand_role if v.verdict == cand_label else other_role
                preferred.append(role)
                rows.append(_judgment_row(kind, i, str(qid), order, v, role))
            outcome = {cand_role: "win", other_role: "loss", TIE: "tie"}[preferred[0]]
            assert preferred[0] == preferred[1], "the rule judge must not depend on the order"
            outcomes.append({"kind": kind, "pair_index": i, "query_id": str(qid),
                             "rule_id": rule_id, "outcome": outcome})
        return rows, outcomes

    def usage(self) -> dict[str, Any]:
        """Same keys as the LM judges' usage; nothing is spent."""
        return {"requests": self._requests, "prompt_tokens": 0, "completion_tokens": 0,
                "est_cost_usd": 0.0}


def _judgment_row(kind: str, index: int, qid: str, order: int, v: RuleVerdict,
                  preferred: str) -> dict[str, Any]:
    return {
        "kind": kind, "pair_index": index, "query_id": qid, "order": order,
        "candidate_label": LABELS[order], "raw": v.reason, "verdict": v.verdict,
        "preferred": preferred, "source": "rules", "logprob_a": math.nan, "logprob_b": math.nan,
        "cached": False, "prompt_tokens": 0, "completion_tokens": 0, "judge": RULE_JUDGE_ID,
        "prompt_version": VERIFIABLE_VERSION, "cache_key": "", "rule_id": v.rule_id,
    }


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n``; (nan, nan) when ``n == 0``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(successes, bool) or not isinstance(successes, int) or not 0 <= successes <= n:
        raise ValueError(f"successes must be an integer in 0..n={n}, got {successes!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)      # exact at the ends
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _accuracy_stats(chosen_ok: list[bool], rejected_ok: list[bool], level: float) -> dict[str, Any]:
    n = len(chosen_ok)
    correct = sum(c and not r for c, r in zip(chosen_ok, rejected_ok))
    reverse = sum(r and not c for c, r in zip(chosen_ok, rejected_ok))
    both = sum(c and r for c, r in zip(chosen_ok, rejected_ok))
    neither = n - correct - reverse - both
    low, high = wilson_interval(correct, n, level)
    return {"n": n, "correct": correct, "reversed": reverse, "tie_both": both,
            "tie_neither": neither, "ties": both + neither,
            "accuracy": correct / n if n else math.nan, "ci_low": low, "ci_high": high,
            "rate": (correct + 0.5 * (both + neither)) / n if n else math.nan,
            "chosen_compliance": sum(chosen_ok) / n if n else math.nan,
            "rejected_compliance": sum(rejected_ok) / n if n else math.nan}


def preference_accuracy_by_rule(pairs_df: pd.DataFrame, *, level: float = 0.95
                                ) -> dict[str, dict[str, Any]]:
    """Rule-judged accuracy of preference pairs, per rule and ``"overall"``.

    ``pairs_df`` needs columns prompt, chosen, rejected, rule_id (one row per pair). For each
    rule: ``accuracy`` = share of pairs whose chosen complies and rejected does not, with its
    Wilson ``ci_low``/``ci_high``; ``reversed`` (only rejected complies), ``tie_both``,
    ``tie_neither`` and ``ties`` counted separately; ``rate`` = (correct + ties / 2) / n as in
    ``protocol.compute_rate``; and each side's compliance share.
    """
    if not isinstance(pairs_df, pd.DataFrame):
        raise ValueError(f"pairs_df must be a pandas DataFrame, got {type(pairs_df).__name__}")
    missing = [c for c in ("prompt", "chosen", "rejected", "rule_id") if c not in pairs_df.columns]
    if missing:
        raise ValueError(f"pairs_df is missing column(s) {missing} (has {list(pairs_df.columns)})")
    per_rule: dict[str, tuple[list[bool], list[bool]]] = {}
    for i, (chosen, rejected, rule_id) in enumerate(
            zip(pairs_df["chosen"], pairs_df["rejected"], pairs_df["rule_id"])):
        rule = get_rule(rule_id)
        c_ok = rule.check(_text(chosen, f"chosen in row {i}"))
        r_ok = rule.check(_text(rejected, f"rejected in row {i}"))
        sides = per_rule.setdefault(rule_id, ([], []))
        sides[0].append(bool(c_ok))
        sides[1].append(bool(r_ok))
    out = {rid: _accuracy_stats(c, r, level) for rid, (c, r) in sorted(per_rule.items())}
    all_c = [x for c, _ in per_rule.values() for x in c]
    all_r = [x for _, r in per_rule.values() for x in r]
    out[OVERALL] = _accuracy_stats(all_c, all_r, level)
    return out


def compliance_rate(answers: Iterable[str], rule_ids: Iterable[str], *, level: float = 0.95
                    ) -> dict[str, dict[str, Any]]:
    """Share of ``answers`` that comply with their rule's GOOD principle, per rule and overall.

    ``answers`` and ``rule_ids`` are parallel sequences. Each entry: ``n``, ``complied``,
    ``rate`` with Wilson ``ci_low``/``ci_high``, and ``mean_score`` (the graded score's mean).
    """
    answers, rule_ids = list(answers), list(rule_ids)
    if len(answers) != len(rule_ids):
        raise ValueError(f"answers and rule_ids must have the same length, got {len(answers)} "
                         f"and {len(rule_ids)}")
    per_rule: dict[str, list[tuple[bool, float]]] = {}
    for i, (answer, rule_id) in enumerate(zip(answers, rule_ids)):
        rule = get_rule(rule_id)
        text = _text(answer, f"answer {i}")
        per_rule.setdefault(rule_id, []).append((bool(rule.check(text)), float(rule.score(text))))

    def stats(items: list[tuple[bool, float]]) -> dict[str, Any]:
        n, ok = len(items), sum(c for c, _ in items)
        low, high = wilson_interval(ok, n, level)
        return {"n": n, "complied": ok, "rate": ok / n if n else math.nan, "ci_low": low,
                "ci_high": high, "mean_score": sum(s for _, s in items) / n if n else math.nan}

    out = {rid: stats(items) for rid, items in sorted(per_rule.items())}
    out[OVERALL] = stats([x for items in per_rule.values() for x in items])
    return out

"""The summary of one judge run: the metrics dict and the usage dict of ``steps.judge.judge``.

Rates count a tie as half a win and leave unparsable pairs out (see :mod:`sso.judge.protocol`);
lengths are in characters.
"""

from __future__ import annotations

import math
from typing import Any

from sso.judge.protocol import bootstrap_ci, compute_rate


def compute_judge_metrics(pairs: list[dict[str, Any]], eval_pairs: list[tuple[str, str, str, str]],
                          *, seed: int, accuracy_n: int) -> dict[str, Any]:
    """Win rate (with its seeded bootstrap CI), counts and answer lengths over the ``win_rate``
    pair outcomes, and preference accuracy over the ``accuracy`` ones. ``eval_pairs`` are
    (query_id, prompt, arm answer, base answer); ``accuracy_n`` is the number of sampled pairs."""
    win = [p["outcome"] for p in pairs if p["kind"] == "win_rate"]
    acc = [p["outcome"] for p in pairs if p["kind"] == "accuracy"]
    w, a = compute_rate(win), compute_rate(acc)
    low, high = bootstrap_ci(win, seed=seed)

    def mean_len(texts: list[str]) -> float:
        return float(sum(len(t) for t in texts) / len(texts)) if texts else math.nan

    return {
        "win_rate": w["rate"], "win_rate_ci_low": low, "win_rate_ci_high": high,
        "wins": w["win"], "losses": w["loss"], "ties": w["tie"], "unparsable": w["unparsable"],
        "n_eval": w["n"], "failed": w["failed"],
        "mean_answer_len": mean_len([p[2] for p in eval_pairs]),
        "base_mean_answer_len": mean_len([p[3] for p in eval_pairs]),
        "pref_accuracy": a["rate"], "pref_accuracy_n": accuracy_n, "pref_ties": a["tie"],
        "pref_unparsable": a["unparsable"], "pref_failed": a["failed"],
    }


def summarize_usage(usage: dict[str, Any], judge_id: str) -> dict[str, Any]:
    """A backend's usage as plain numbers: requests (asked this run), cache_hits, prompt and
    completion tokens, est_cost_usd (USD), http_attempts (requests where the backend counts none)
    and the judge id."""
    return {"requests": int(usage.get("requests", 0)), "cache_hits": int(usage.get("cache_hits", 0)),
            "prompt_tokens": int(usage.get("prompt_tokens", 0)),
            "completion_tokens": int(usage.get("completion_tokens", 0)),
            "est_cost_usd": float(usage.get("est_cost_usd", 0.0)),
            "http_attempts": int(usage.get("http_attempts", usage.get("requests", 0))),
            "failed_requests": int(usage.get("failed_requests", 0)), "judge": judge_id}


def length_controlled(judgments, answers, base_answers, *, seed: int) -> dict[str, Any]:
    """The length-controlled win rate of :func:`sso.judge.stats.lc_win_rate` as metrics keys:
    lc_win_rate, lc_win_rate_ci_low/high, length_coef and lc_reason ("" when fitted)."""
    from sso.judge.stats import lc_win_rate

    if judgments is None or len(judgments) == 0:
        lc = {"lc_win_rate": math.nan, "lc_win_rate_ci_low": math.nan, "lc_win_rate_ci_high": math.nan,
              "length_coef": math.nan, "reason": "no judgments"}
    else:
        lc = lc_win_rate(judgments, answers, base_answers, seed=seed)
    return {k: lc.get(k, math.nan) for k in ("lc_win_rate", "lc_win_rate_ci_low", "lc_win_rate_ci_high",
                                             "length_coef")} | {"lc_reason": lc.get("reason", "")}


RULE_METRICS = ("rule_pref_accuracy", "rule_pref_accuracy_ci_low", "rule_pref_accuracy_ci_high",
                "rule_compliance", "rule_compliance_ci_low", "rule_compliance_ci_high", "base_rule_compliance")


def rule_metrics(train_pairs, answers, base_answers, rule_ids: tuple[str, ...]) -> dict[str, Any]:
    """The rule judge's numbers (:mod:`sso.judge.rules`), for verifiable principles.

    ``rule_pref_accuracy``: share of the arm's training pairs (all of them; the rule judge is free)
    whose chosen answer complies with the pair's rule and whose rejected one does not, with its
    Wilson 95 % CI. ``rule_compliance``: share of (eval answer, rule) checks that comply, every
    answer checked against every rule of the pool (the eval prompts carry no principle: this asks
    how much of the steered behaviour the policy shows unprompted), with CI;
    ``base_rule_compliance`` the same for the base answers.
    """
    from sso.judge.rules import OVERALL, compliance_rate, preference_accuracy_by_rule

    out = dict.fromkeys(RULE_METRICS, math.nan)
    if "rule_id" in train_pairs and len(train_pairs):
        acc = preference_accuracy_by_rule(train_pairs)[OVERALL]
        out.update(rule_pref_accuracy=acc["accuracy"], rule_pref_accuracy_ci_low=acc["ci_low"],
                   rule_pref_accuracy_ci_high=acc["ci_high"])
    for key, table in (("rule_compliance", answers), ("base_rule_compliance", base_answers)):
        texts = [str(a) for a in table["answer"]]
        rate = compliance_rate(texts * len(rule_ids), [r for r in rule_ids for _ in texts])[OVERALL]
        out[key] = rate["rate"]
        if key == "rule_compliance":
            out.update(rule_compliance_ci_low=rate["ci_low"], rule_compliance_ci_high=rate["ci_high"])
    return out

"""The results table (one row per arm) and its console form.

``build_results`` columns: arm, n_pairs, final_loss, train_accuracy, on_policyness, win_rate,
win_rate_ci_low, win_rate_ci_high, wins, losses, ties, unparsable, n_eval, mean_answer_len,
base_mean_answer_len, pref_accuracy, judge_requests, judge_cache_hits, judge_cost_usd, the
length-controlled win rate (lc_win_rate with its CI, length_coef) and, for arms other than ``sso``,
the head-to-head vs the ``sso`` arm (h2h_vs_sso: preference of this arm over sso's answers, both
orders; win_rate_diff_vs_sso: this arm's win rate vs base minus sso's, paired CI) (missing values as
NaN), and with verifiable principles the rule judge's rule_pref_accuracy, rule_compliance (with
CIs) and base_rule_compliance, in the order of ``RESULT_COLUMNS``; then where each arm's data came
from and what it cost (:func:`arm_info`: kind, source, iteration, gamma, lam, train_seconds,
train_tokens, generator_seconds, generator_tokens; CPU- or GPU-seconds of the training loops as
measured in the training steps, sampling and judging not included; the judge's cost is in
judge_requests / judge_cost_usd).
"""

from __future__ import annotations

import math

import pandas as pd

INFO_COLUMNS = ("kind", "source", "iteration", "gamma", "lam", "train_seconds", "train_tokens",
                "generator_seconds", "generator_tokens")
RESULT_COLUMNS = ["arm", "n_pairs", "final_loss", "train_accuracy", "on_policyness", "win_rate",
                  "win_rate_ci_low", "win_rate_ci_high", "wins", "losses", "ties", "unparsable",
                  "n_eval", "mean_answer_len", "base_mean_answer_len", "pref_accuracy",
                  "judge_requests", "judge_cache_hits", "judge_cost_usd",
                  "lc_win_rate", "lc_win_rate_ci_low", "lc_win_rate_ci_high", "length_coef",
                  "h2h_vs_sso", "h2h_vs_sso_ci_low", "h2h_vs_sso_ci_high",
                  "win_rate_diff_vs_sso", "win_rate_diff_vs_sso_ci_low", "win_rate_diff_vs_sso_ci_high",
                  "rule_pref_accuracy", "rule_pref_accuracy_ci_low", "rule_pref_accuracy_ci_high",
                  "rule_compliance", "rule_compliance_ci_low", "rule_compliance_ci_high", "base_rule_compliance",
                  "failed", *INFO_COLUMNS]
METRIC_COLUMNS = ("win_rate", "win_rate_ci_low", "win_rate_ci_high", "wins", "losses", "ties", "unparsable",
                  "n_eval", "mean_answer_len", "base_mean_answer_len", "pref_accuracy", "lc_win_rate",
                  "lc_win_rate_ci_low", "lc_win_rate_ci_high", "length_coef", "h2h_vs_sso",
                  "h2h_vs_sso_ci_low", "h2h_vs_sso_ci_high", "win_rate_diff_vs_sso",
                  "win_rate_diff_vs_sso_ci_low", "win_rate_diff_vs_sso_ci_high", "rule_pref_accuracy",
                  "rule_pref_accuracy_ci_low", "rule_pref_accuracy_ci_high", "rule_compliance",
                  "rule_compliance_ci_low", "rule_compliance_ci_high", "base_rule_compliance", "failed")


def build_results(arm_results: list[dict], arm_order: list[str] | None = None) -> pd.DataFrame:
    """One row per arm from (arm, n_pairs, train_summary, metrics, usage) dicts, in ``arm_order``."""
    rows = []
    for r in arm_results:
        train, metrics, usage = r.get("train_summary", {}), r.get("metrics", {}), r.get("usage", {})
        rows.append({
            "arm": r["arm"], "n_pairs": r["n_pairs"],
            "final_loss": train.get("final_loss", math.nan),
            "train_accuracy": train.get("accuracy", math.nan),
            "on_policyness": on_policyness(train),
            **{k: metrics.get(k, math.nan) for k in METRIC_COLUMNS},
            "judge_requests": usage.get("requests", math.nan),
            "judge_cache_hits": usage.get("cache_hits", math.nan),
            "judge_cost_usd": usage.get("est_cost_usd", math.nan),
            **{k: r.get("info", {}).get(k, math.nan) for k in INFO_COLUMNS},
        })
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    if arm_order:
        rank = {a: i for i, a in enumerate(arm_order)}
        table = table.sort_values("arm", key=lambda s: s.map(rank)).reset_index(drop=True)
    return table


def arm_info(arm, cfg, generator_summary: dict, policy_summaries: list[dict]) -> dict:
    """Where an arm's data comes from and its training cost: ``arm`` an :class:`sso.arms.Arm`,
    ``generator_summary`` its generator's training summary ({} without one), ``policy_summaries``
    the training summaries that made its policy (an online iteration t: iterations 1..t)."""
    from sso.arms import arm_source, generator_config, plan_run

    info = {"kind": arm.kind, "source": arm_source(arm), "iteration": arm.iteration or math.nan,
            "gamma": math.nan, "lam": math.nan,
            "train_seconds": sum(s.get("seconds", 0.0) for s in policy_summaries),
            "train_tokens": sum(s.get("tokens", 0) for s in policy_summaries),
            "generator_seconds": generator_summary.get("seconds", 0.0),
            "generator_tokens": generator_summary.get("tokens", 0)}
    if arm.generator:
        gen = generator_config(cfg.generator, plan_run(cfg).generators[arm.generator])
        info.update(gamma=gen.gamma, lam=gen.lam)
    return info


def sweep_table(results: pd.DataFrame) -> pd.DataFrame:
    """The generator-based arms by (gamma, lambda): win rates with CIs, LC, preference accuracy and
    cost; the answer to "which gamma / lambda" of one run."""
    cols = ["arm", "gamma", "lam", "n_pairs", "win_rate", "win_rate_ci_low", "win_rate_ci_high",
            "lc_win_rate", "lc_win_rate_ci_low", "lc_win_rate_ci_high", "pref_accuracy",
            "generator_seconds", "train_seconds"]
    table = results[results["gamma"].notna()][cols]
    return table.sort_values(["gamma", "lam"], kind="stable").reset_index(drop=True)


def on_policyness(summary: dict) -> float:
    """Mean per-token probability of the arm's chosen and rejected responses under the initial
    policy (plain prompt), as measured by the trainer's reference pass."""
    values = [summary[k] for k in ("onpolicy_chosen", "onpolicy_rejected") if k in summary]
    return sum(values) / len(values) if values else math.nan


def format_summary(results: pd.DataFrame) -> str:
    """A plain-text summary table for the console (h2h: preference over the sso arm's answers;
    train s: seconds of the arm's training loops, its generator's included)."""
    w = max([6, *map(len, results["arm"])])
    lines = [f"{'arm':<{w}} {'pairs':>6} {'final_loss':>10} {'win_rate':>9} {'95% CI':>15} "
             f"{'LC':>6} {'ties':>5} {'unparsable':>10} {'h2h_vs_sso':>11} {'95% CI':>15} {'train s':>8}"]
    for r in results.itertuples():
        ci = f"[{r.win_rate_ci_low:.2f}, {r.win_rate_ci_high:.2f}]"
        h2h = "" if math.isnan(r.h2h_vs_sso) else f"{r.h2h_vs_sso:.3f}"
        h2h_ci = "" if math.isnan(r.h2h_vs_sso) else f"[{r.h2h_vs_sso_ci_low:.2f}, {r.h2h_vs_sso_ci_high:.2f}]"
        cost = sum(0.0 if math.isnan(v) else v for v in (r.train_seconds, r.generator_seconds))
        lines.append(f"{r.arm:<{w}} {r.n_pairs:>6} {r.final_loss:>10.4f} {r.win_rate:>9.3f} {ci:>15} "
                     f"{r.lc_win_rate:>6.3f} {r.ties:>5} {r.unparsable:>10} {h2h:>11} {h2h_ci:>15} {cost:>8.1f}")
    if results["rule_pref_accuracy"].notna().any():
        lines += ["", f"{'arm':<{w}} {'rule pref. acc.':>15} {'95% CI':>15} {'rule compliance':>15} "
                      f"{'95% CI':>15} {'base':>6}"]
        for r in results.itertuples():
            lines.append(f"{r.arm:<{w}} {r.rule_pref_accuracy:>15.3f} "
                         f"{f'[{r.rule_pref_accuracy_ci_low:.2f}, {r.rule_pref_accuracy_ci_high:.2f}]':>15} "
                         f"{r.rule_compliance:>15.3f} "
                         f"{f'[{r.rule_compliance_ci_low:.2f}, {r.rule_compliance_ci_high:.2f}]':>15} "
                         f"{r.base_rule_compliance:>6.3f}")
    return "\n".join(lines)

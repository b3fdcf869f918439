"""Arms judged against each other: each arm's answers vs a reference arm's, both orders.

The same protocol, judge and cache as the judge step (:mod:`sso.judge.protocol`): the candidate
is the arm, the other answer the reference arm's (``sso``), so a win means the arm beat the
reference. Besides that direct preference, the difference of the two arms' win rates vs the base
policy is reported with a paired bootstrap CI (:func:`sso.judge.stats.win_rate_difference`).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sso.judge.backends import judge_with_config, make_judge_backend
from sso.judge.pairs import build_eval_pairs
from sso.judge.protocol import build_requests
from sso.judge.stats import head_to_head, win_rate_difference

H2H_KEYS = ("h2h_vs_sso", "h2h_vs_sso_ci_low", "h2h_vs_sso_ci_high", "win_rate_diff_vs_sso",
            "win_rate_diff_vs_sso_ci_low", "win_rate_diff_vs_sso_ci_high")


def judge_against_reference(answers: dict[str, pd.DataFrame], judgments: dict[str, pd.DataFrame], cfg, *,
                            reference: str = "sso", progress: bool = True, store=None
                            ) -> tuple[dict[str, dict], pd.DataFrame]:
    """For every arm but ``reference``: its preference over the reference arm (both orders, with
    a bootstrap CI over queries) and its win rate vs base minus the reference's (paired CI).

    ``answers``: arm -> (query_id, prompt, answer) on the eval queries; ``judgments``: arm -> that
    arm's judge-step judgments vs base; ``store``: the shared judge cache (the flow's datastore,
    as in the judge step). Returns ({arm: metrics with :data:`H2H_KEYS`}, the
    head-to-head judgments with an ``arm`` column). Without the reference arm: ({}, empty).
    """
    if reference not in answers:
        return {}, pd.DataFrame()
    backend = None
    metrics, tables = {}, []
    for arm in [a for a in answers if a != reference]:
        backend = backend or make_judge_backend(cfg)
        what = f"head-to-head[{arm} vs {reference}]"
        requests = build_requests("win_rate", build_eval_pairs(answers[arm], answers[reference]))
        rows, _ = judge_with_config(requests, backend, cfg, what, progress=progress, store=store)
        table = pd.DataFrame(rows, columns=list(rows[0]) if rows else None)
        metrics[arm] = summarize(table, judgments[arm], judgments[reference], seed=cfg.run.seed)
        tables.append(table.assign(arm=arm, reference=reference))
    return metrics, (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame())


def summarize(h2h: pd.DataFrame, arm_vs_base: pd.DataFrame, ref_vs_base: pd.DataFrame, *,
              seed: int) -> dict[str, Any]:
    """The :data:`H2H_KEYS` of one arm from its head-to-head and both arms' vs-base judgments."""
    direct = head_to_head(h2h, seed=seed) if len(h2h) else {}
    diff = win_rate_difference(win_rate_rows(arm_vs_base), win_rate_rows(ref_vs_base), seed=seed)
    get = lambda d, k: d.get(k, math.nan)  # noqa: E731
    return dict(zip(H2H_KEYS, (get(direct, "preference"), get(direct, "ci_low"), get(direct, "ci_high"),
                               get(diff, "difference"), get(diff, "ci_low"), get(diff, "ci_high"))))


def win_rate_rows(judgments: pd.DataFrame) -> pd.DataFrame:
    """The ``win_rate`` judgments of a judge-step table (its accuracy judgments left out)."""
    return judgments[judgments["kind"] == "win_rate"]

"""Step ``compare`` (join over arms): the results table and the per-arm artifacts, keyed by arm.

Input: one dict per arm branch with the branch's artifacts (arm, n_pairs, arm_info, policy_adapter,
policy_history, policy_summary, answers, judgments, judge_metrics, judge_usage) and the arm order.
Output: ``results`` (one row per arm, see :mod:`sso.report.results`), ``sweep`` (the
generator-based arms by gamma and lambda: :func:`sso.report.results.sweep_table`), ``policy_adapters``,
``policy_histories``, ``policy_summaries`` (arm -> value), ``arm_answers`` and ``judgments`` (the
arms' tables stacked, with an ``arm`` column) and ``h2h_judgments``: every other arm's answers
judged directly against the ``sso`` arm's (both orders; :mod:`sso.judge.head_to_head`).
Side effects: the head-to-head judge requests (same judge and cache as the judge step; ``store``:
the flow's datastore tier of that cache).
"""

from __future__ import annotations

import pandas as pd

from sso.config import SSOConfig
from sso.judge.head_to_head import judge_against_reference
from sso.report.results import build_results, sweep_table


def compare(per_arm: list[dict], arm_order: list[str], cfg: SSOConfig, *, progress: bool = True,
            store=None) -> dict:
    h2h, h2h_judgments = judge_against_reference({a["arm"]: a["answers"] for a in per_arm},
                                                 {a["arm"]: a["judgments"] for a in per_arm}, cfg,
                                                 progress=progress, store=store)
    results = build_results([{"arm": a["arm"], "n_pairs": a["n_pairs"], "train_summary": a["policy_summary"],
                              "metrics": {**a["judge_metrics"], **h2h.get(a["arm"], {})},
                              "usage": a["judge_usage"], "info": a.get("arm_info", {})} for a in per_arm],
                            arm_order=arm_order)
    return {"results": results, "sweep": sweep_table(results),
            "policy_adapters": {a["arm"]: a["policy_adapter"] for a in per_arm},
            "policy_histories": {a["arm"]: a["policy_history"] for a in per_arm},
            "policy_summaries": {a["arm"]: a["policy_summary"] for a in per_arm},
            "arm_answers": stack(per_arm, "answers"), "judgments": stack(per_arm, "judgments"),
            "h2h_judgments": h2h_judgments}


def stack(per_arm: list[dict], key: str) -> pd.DataFrame:
    """The arms' ``key`` tables one under the other, with an ``arm`` column."""
    return pd.concat([a[key].assign(arm=a["arm"]) for a in per_arm], ignore_index=True)

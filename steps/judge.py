"""Judge one policy arm: pairwise win rate against the base policy and preference-data accuracy.

Inputs
    arm           name of the arm (``sso``, ``pbaa``, ...), for messages and progress only
    answers       the arm's answers on the eval queries: ``query_id, prompt, answer``
    base_answers  the base policy's answers on the same queries: ``query_id, prompt, answer``
    train_pairs   the arm's preference training data: ``query_id, prompt, chosen, rejected``
    cfg           ``SSOConfig``; reads ``[judge]``, ``[model]`` (local judge) and ``run.seed``

Output (a dict of plain objects: no client, model or key)
    judgments  DataFrame, one row per (pair, order): kind (``win_rate`` | ``accuracy``),
               pair_index, query_id, order, candidate_label, raw (judge text), verdict (A/B/None),
               preferred (arm/base, chosen/rejected or ``unparsable``), source (local / logprobs /
               text), logprob_a, logprob_b, cached, tokens, judge, prompt_version, cache_key
    pairs      DataFrame, one row per pair: kind, pair_index, query_id, outcome
               (win / loss / tie / unparsable)
    metrics    win_rate (ties count half, AlpacaEval's convention), win_rate_ci_low/high (seeded
               95 % bootstrap), wins, losses, ties, unparsable, n_eval, mean_answer_len and
               base_mean_answer_len (characters), pref_accuracy (same rule: chosen preferred in
               both orders = 1, disagreement = 0.5), pref_accuracy_n (pairs sampled),
               pref_ties, pref_unparsable; lc_win_rate with lc_win_rate_ci_low/high and
               length_coef (:func:`sso.judge.stats.lc_win_rate`, NaN with lc_reason when no fit);
               with ``[principles] source = "verifiable"`` also the rule judge's
               rule_pref_accuracy (+ CI), rule_compliance (+ CI) and base_rule_compliance
               (:func:`sso.judge.metrics.rule_metrics`); unparsable pairs are excluded from every rate
    usage      requests (asked this run), cache_hits, prompt_tokens, completion_tokens,
               est_cost_usd, plus http_attempts and the judge id

The work is done by :mod:`sso.judge` (pairs, backends, protocol, metrics); this module validates
the tables, calls it, and returns plain objects.

Side effects
    Reads and writes the judge cache: ``store`` (the flow passes its datastore, so retries and
    resumed runs anywhere find every answer) and ``[judge] cache_dir`` when set; for ``backend = 'openai'`` makes
    HTTP requests, after checking the budget guard. Raises on an unreachable endpoint (judgments
    received until then stay cached, so a ``resume`` asks only the rest). With ``[judge]
    max_failed_fraction > 0`` up to that fraction of requests may fail for good: they are rows with
    ``preferred = "failed"`` and their ``error``, pairs with outcome ``failed``, counted in
    ``metrics["failed"]`` / ``usage["failed_requests"]`` and left out of every rate.
"""

from __future__ import annotations

import logging

import pandas as pd

from sso.config import SSOConfig
from sso.judge.backends import judge_with_config, make_judge_backend
from sso.judge.metrics import compute_judge_metrics, length_controlled, rule_metrics, summarize_usage
from sso.judge.pairs import (
    ANSWER_COLUMNS,
    PAIR_COLUMNS,
    build_eval_pairs,
    check_columns,
    sample_train_pairs,
)
from sso.judge.protocol import build_requests, compute_pair_outcomes

log = logging.getLogger("sso.judge")

PAIR_OUTCOME_COLUMNS = ["kind", "pair_index", "query_id", "outcome"]


def rule_pool(pcfg) -> tuple[str, ...]:
    """The verifiable rules the run's principles were drawn from."""
    from sso.data.verifiable import DEFAULT_RULE_IDS

    return tuple(pcfg.rules) or DEFAULT_RULE_IDS


def judge(arm: str, answers: pd.DataFrame, base_answers: pd.DataFrame, train_pairs: pd.DataFrame,
          cfg: SSOConfig, *, progress: bool = True, store=None) -> dict:
    """Win rate of ``arm`` vs the base policy and accuracy of its training pairs (see module doc)."""
    check_columns(answers, "answers", ANSWER_COLUMNS)
    check_columns(base_answers, "base_answers", ANSWER_COLUMNS)
    check_columns(train_pairs, "train_pairs", PAIR_COLUMNS)
    eval_pairs = build_eval_pairs(answers, base_answers)
    acc_pairs = sample_train_pairs(train_pairs, cfg.judge.accuracy_pairs, cfg.run.seed)
    requests = build_requests("win_rate", eval_pairs) + build_requests("accuracy", acc_pairs)

    what = f"judge[{arm}]"
    backend = make_judge_backend(cfg)
    rows, usage = judge_with_config(requests, backend, cfg, what, progress=progress, store=store)
    pairs = compute_pair_outcomes(rows)
    judgments = pd.DataFrame(rows, columns=list(rows[0]) if rows else None)
    metrics = {**compute_judge_metrics(pairs, eval_pairs, seed=cfg.run.seed, accuracy_n=len(acc_pairs)),
               **length_controlled(judgments, answers, base_answers, seed=cfg.run.seed)}
    if cfg.principles.source == "verifiable":
        metrics.update(rule_metrics(train_pairs, answers, base_answers, rule_pool(cfg.principles)))
    usage = summarize_usage(usage, backend.judge_id)
    log.info("%s: %d judgments (%d cached, %d requested); win rate %.3f, unparsable %d",
             what, len(rows), usage["cache_hits"], usage["requests"], metrics["win_rate"],
             metrics["unparsable"])
    return {"judgments": judgments,
            "pairs": pd.DataFrame(pairs, columns=PAIR_OUTCOME_COLUMNS),
            "metrics": metrics, "usage": usage}

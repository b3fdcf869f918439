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
               pref_ties, pref_unparsable; unparsable pairs are excluded from every rate
    usage      requests (asked this run), cache_hits, prompt_tokens, completion_tokens,
               est_cost_usd, plus http_attempts and the judge id

Side effects
    Reads and writes the judge cache (``[judge] cache_dir``); for ``backend = 'openai'`` makes
    HTTP requests, after checking the budget guard. Raises on an unreachable endpoint (judgments
    received until then stay cached, so a ``resume`` asks only the rest).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pandas as pd

from sso.config import SSOConfig
from sso.judge.cache import JudgeCache
from sso.judge.protocol import (
    bootstrap_ci,
    build_requests,
    compute_pair_outcomes,
    compute_rate,
    run_judgments,
)

log = logging.getLogger("sso.judge")

ANSWER_COLUMNS = ("query_id", "prompt", "answer")
PAIR_COLUMNS = ("query_id", "prompt", "chosen", "rejected")


def _check_columns(df: pd.DataFrame, name: str, columns: tuple[str, ...]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"judge: {name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"judge: {name} lacks column(s) {missing}; expected {list(columns)}, "
                         f"got {list(df.columns)}")


def _text(series: pd.Series) -> list[str]:
    return ["" if (v is None or (isinstance(v, float) and math.isnan(v))) else str(v) for v in series]


def build_eval_pairs(answers: pd.DataFrame, base_answers: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """(query_id, prompt, arm answer, base answer) in the order of ``answers``."""
    ids = [str(q) for q in answers["query_id"]]
    base_ids = [str(q) for q in base_answers["query_id"]]
    for name, seq in (("answers", ids), ("base_answers", base_ids)):
        dup = sorted({q for q in seq if seq.count(q) > 1})
        if dup:
            raise ValueError(f"judge: {name} has duplicate query_id(s) {dup[:5]}")
    if set(ids) != set(base_ids):
        only_arm = sorted(set(ids) - set(base_ids))[:5]
        only_base = sorted(set(base_ids) - set(ids))[:5]
        raise ValueError(f"judge: answers and base_answers cover different queries "
                         f"(only in answers: {only_arm}; only in base_answers: {only_base})")
    base = dict(zip(base_ids, zip(_text(base_answers["prompt"]), _text(base_answers["answer"]))))
    out = []
    for qid, prompt, answer in zip(ids, _text(answers["prompt"]), _text(answers["answer"])):
        base_prompt, base_answer = base[qid]
        if base_prompt != prompt:
            raise ValueError(f"judge: query_id {qid!r} has a different prompt in answers and base_answers")
        out.append((qid, prompt, answer, base_answer))
    return out


def sample_train_pairs(train_pairs: pd.DataFrame, n: int, seed: int) -> list[tuple[str, str, str, str]]:
    """A seeded sample of ``n`` training pairs (all of them if fewer), in their original order."""
    import numpy as np

    total = len(train_pairs)
    k = min(n, total)
    idx = sorted(np.random.default_rng(seed).choice(total, size=k, replace=False).tolist()) if k else []
    rows = train_pairs.iloc[idx]
    return list(zip([str(q) for q in rows["query_id"]], _text(rows["prompt"]),
                    _text(rows["chosen"]), _text(rows["rejected"])))


def make_judge_backend(cfg: SSOConfig):
    """The configured judge: ``LocalJudge`` (default) or ``OpenAIJudge`` (reads the key now)."""
    j = cfg.judge
    if j.backend == "local":
        from sso.judge.local import LocalJudge

        return LocalJudge(j.local_model or cfg.model.name, dtype=cfg.model.dtype,
                          device=cfg.model.device,
                          revision="" if j.local_model else cfg.model.revision,
                          trust_remote_code=cfg.model.trust_remote_code)
    if j.backend == "openai":
        from sso.judge.transport import OpenAIJudge

        return OpenAIJudge(j)
    raise ValueError(f"[judge] backend must be 'local' or 'openai', got {j.backend!r}")


def judge(arm: str, answers: pd.DataFrame, base_answers: pd.DataFrame, train_pairs: pd.DataFrame,
          cfg: SSOConfig, *, progress: bool = True) -> dict:
    """Win rate of ``arm`` vs the base policy and accuracy of its training pairs (see module doc)."""
    _check_columns(answers, "answers", ANSWER_COLUMNS)
    _check_columns(base_answers, "base_answers", ANSWER_COLUMNS)
    _check_columns(train_pairs, "train_pairs", PAIR_COLUMNS)
    eval_pairs = build_eval_pairs(answers, base_answers)
    acc_pairs = sample_train_pairs(train_pairs, cfg.judge.accuracy_pairs, cfg.run.seed)
    requests = build_requests("win_rate", eval_pairs) + build_requests("accuracy", acc_pairs)

    backend = make_judge_backend(cfg)
    cache = JudgeCache(cfg.judge.cache_dir or None)
    before_start = None
    if cfg.judge.backend == "openai":
        from sso.judge.transport import check_budget, estimate_run

        def before_start(todo):
            estimate = estimate_run(todo, cfg.judge.model)
            check_budget(estimate, cfg.judge, what=f"judge[{arm}]")
            log.info("judge[%s]: %d uncached requests, est. ~$%.2f", arm, estimate["requests"],
                     estimate["cost_usd"])

    rows, usage = run_judgments(requests, backend, cache, progress=progress,
                                desc=f"judge[{arm}]", before_start=before_start)
    pairs = compute_pair_outcomes(rows)
    metrics = compute_judge_metrics(pairs, eval_pairs, seed=cfg.run.seed,
                                    accuracy_n=len(acc_pairs))
    usage = {"requests": int(usage.get("requests", 0)), "cache_hits": int(usage.get("cache_hits", 0)),
             "prompt_tokens": int(usage.get("prompt_tokens", 0)),
             "completion_tokens": int(usage.get("completion_tokens", 0)),
             "est_cost_usd": float(usage.get("est_cost_usd", 0.0)),
             "http_attempts": int(usage.get("http_attempts", usage.get("requests", 0))),
             "judge": backend.judge_id}
    log.info("judge[%s]: %d judgments (%d cached, %d requested); win rate %.3f, unparsable %d",
             arm, len(rows), usage["cache_hits"], usage["requests"], metrics["win_rate"],
             metrics["unparsable"])
    judgments = pd.DataFrame(rows, columns=list(rows[0]) if rows else None)
    return {"judgments": judgments,
            "pairs": pd.DataFrame(pairs, columns=["kind", "pair_index", "query_id", "outcome"]),
            "metrics": metrics, "usage": usage}


def compute_judge_metrics(pairs: list[dict[str, Any]], eval_pairs: list[tuple[str, str, str, str]],
                          *, seed: int, accuracy_n: int) -> dict[str, Any]:
    """The metrics dict of :func:`judge` from pair outcomes and the eval answers."""
    win = [p["outcome"] for p in pairs if p["kind"] == "win_rate"]
    acc = [p["outcome"] for p in pairs if p["kind"] == "accuracy"]
    w, a = compute_rate(win), compute_rate(acc)
    low, high = bootstrap_ci(win, seed=seed)

    def mean_len(texts: list[str]) -> float:
        return float(sum(len(t) for t in texts) / len(texts)) if texts else math.nan

    return {
        "win_rate": w["rate"], "win_rate_ci_low": low, "win_rate_ci_high": high,
        "wins": w["win"], "losses": w["loss"], "ties": w["tie"], "unparsable": w["unparsable"],
        "n_eval": w["n"],
        "mean_answer_len": mean_len([p[2] for p in eval_pairs]),
        "base_mean_answer_len": mean_len([p[3] for p in eval_pairs]),
        "pref_accuracy": a["rate"], "pref_accuracy_n": accuracy_n, "pref_ties": a["tie"],
        "pref_unparsable": a["unparsable"],
    }

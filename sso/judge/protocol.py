"""The pairwise protocol: both orders per pair, caching, aggregation and metrics.

Every comparison is a *pair* (instruction, candidate, other): the trained arm's answer vs the base
policy's answer (kind ``win_rate``), or a training pair's chosen vs rejected (kind ``accuracy``).
Each pair is judged twice: order 0 shows the candidate under label A, order 1 under label B.

Aggregation per pair (MT-Bench's conservative rule):

- both orders prefer the candidate -> ``win``; both prefer the other -> ``loss``;
- the orders disagree (position bias) -> ``tie``;
- either order unparsable -> ``unparsable``: counted and reported, never a win, loss or tie, and
  left out of the rate's denominator.

Rates count a tie as half a win (AlpacaEval's convention): ``rate = (wins + ties / 2) /
(wins + losses + ties)``; ties are reported separately. A rate over zero scored pairs is NaN.
The confidence interval is a seeded percentile bootstrap over the scored pairs' scores (1, 0.5, 0).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol as _Protocol

from sso.judge.cache import JudgeCache, compute_cache_key
from sso.judge.parse import decide_verdict
from sso.judge.prompts import LABELS, PROMPT_VERSION, JudgeParts

log = logging.getLogger("sso.judge")

KINDS = ("win_rate", "accuracy")
ROLES = {"win_rate": ("arm", "base"), "accuracy": ("chosen", "rejected")}
OUTCOMES = ("win", "loss", "tie", "unparsable", "failed")
SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}   # a pair outcome as a preference score


@dataclass(frozen=True)
class JudgeRequest:
    """One judge call: a pair shown in one order."""

    kind: str              # win_rate | accuracy
    pair_index: int        # position of the pair within its kind
    query_id: str
    order: int             # 0: candidate under label A; 1: candidate under label B
    instruction: str
    candidate: str         # the arm's answer / the chosen reply
    other: str             # the base answer / the rejected reply

    @property
    def candidate_label(self) -> str:
        return LABELS[self.order]

    @property
    def output_a(self) -> str:
        return self.candidate if self.order == 0 else self.other

    @property
    def output_b(self) -> str:
        return self.other if self.order == 0 else self.candidate

    @property
    def parts(self) -> JudgeParts:
        """What the judge is shown in this order (each backend renders it itself)."""
        return JudgeParts(self.instruction, self.output_a, self.output_b)

    def cache_key(self, judge_id: str) -> str:
        return compute_cache_key(judge_id, PROMPT_VERSION, self.instruction, self.output_a, self.output_b)


def build_requests(kind: str, pairs: Iterable[tuple[str, str, str, str]]) -> list[JudgeRequest]:
    """Both orders for every ``(query_id, instruction, candidate, other)``, pair by pair."""
    if kind not in KINDS:
        raise ValueError(f"unknown judgment kind {kind!r}; expected one of {KINDS}")
    out = []
    for i, (qid, instruction, candidate, other) in enumerate(pairs):
        for order in (0, 1):
            out.append(JudgeRequest(kind, i, str(qid), order, instruction, candidate, other))
    return out


class JudgeBackend(_Protocol):
    """What the protocol needs from a judge (``transport.OpenAIJudge``, ``local.LocalJudge``)."""

    judge_id: str

    def complete_many(self, jobs: list[tuple[str, JudgeParts]],
                      on_done: Callable[[str, dict[str, Any]], None],
                      on_failed: Callable[[str, str], None] | None = None) -> None:
        """Judge every ``(key, parts)`` (rendering the parts in the backend's own way); call
        ``on_done(key, record)`` as each one finishes (from any thread). Without ``on_failed``,
        raise after the in-flight jobs end if the judge cannot go on; with it, report each request
        that fails for good as ``on_failed(key, message)`` and go on."""

    def usage(self) -> dict[str, Any]:
        """requests, prompt_tokens, completion_tokens, est_cost_usd (and backend extras)."""


def split_cached(requests: list[JudgeRequest], judge_id: str, cache: JudgeCache
                 ) -> tuple[dict[str, dict], dict[str, JudgeParts]]:
    """(cached records by key, the parts of the distinct keys still to ask)."""
    parts = {}
    for req in requests:
        parts.setdefault(req.cache_key(judge_id), req.parts)
    cached = cache.get_many(list(parts))          # one batched read (the datastore may be S3)
    return cached, {k: p for k, p in parts.items() if k not in cached}


def run_judgments(requests: list[JudgeRequest], backend: JudgeBackend, cache: JudgeCache, *,
                  progress: bool = False, desc: str = "judge",
                  before_start: Callable[[dict[str, JudgeParts]], None] | None = None,
                  max_failed_fraction: float = 0.0,
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judge every request, cached ones from the cache, the rest through ``backend``.

    Each new raw output is written to the cache the moment it arrives, so a run that fails half
    way keeps everything already answered. ``before_start(todo)`` (the budget guard) may raise
    to refuse. With ``max_failed_fraction > 0`` a request that fails for good becomes a row with
    ``preferred = "failed"`` and its ``error`` (never scored, never cached) as long as at most that
    fraction of the requests failed; beyond it :class:`JudgeFailuresError` says how many and
    the first errors. Returns (one row per request, usage) where usage adds ``cache_hits`` and
    ``failed_requests``.
    """
    judge_id = backend.judge_id
    cached, todo = split_cached(requests, judge_id, cache)
    if before_start is not None:
        before_start(todo)
    fresh, failed = _ask_backend(backend, todo, cache, progress, desc, max_failed_fraction > 0)
    missing = [k for k in todo if k not in fresh and k not in failed]
    if missing:
        raise RuntimeError(f"judge backend returned without answering {len(missing)} of "
                           f"{len(todo)} requests")
    total = len(cached) + len(todo)             # distinct judgments of this call, cached ones included
    if failed and len(failed) > max_failed_fraction * total:
        first = "; ".join(list(failed.values())[:3])
        raise JudgeFailuresError(f"{desc}: {len(failed)} of {total} judge requests failed for good, more "
                                 f"than [judge] max_failed_fraction = {max_failed_fraction:g} allows; first "
                                 f"errors: {first}. The {len(fresh)} answered are cached: a retry or "
                                 f"`resume` asks only the rest")
    fresh.update({k: {"text": "", "failed": True, "error": msg} for k, msg in failed.items()})
    rows = build_judgment_rows(requests, judge_id, cached, fresh)
    usage = dict(backend.usage())
    usage["cache_hits"] = sum(1 for r in rows if r["cached"])
    usage["failed_requests"] = len(failed)
    return rows, usage


class JudgeFailuresError(RuntimeError):
    """More judge requests failed for good than ``[judge] max_failed_fraction`` tolerates."""


def _ask_backend(backend: JudgeBackend, todo: dict[str, JudgeParts], cache: JudgeCache, progress: bool,
                 desc: str, tolerate: bool) -> tuple[dict[str, dict], dict[str, str]]:
    """Send the uncached requests; (answered records by key, error messages by key)."""
    fresh: dict[str, dict] = {}
    failed: dict[str, str] = {}
    lock = threading.Lock()
    bar = None
    if progress and todo:
        from sso.progress import progress_bar

        bar = progress_bar(len(todo), desc, unit="req")

    def on_done(key: str, record: dict[str, Any]) -> None:
        cache.put(key, record)
        with lock:
            fresh[key] = record
            if bar is not None:
                bar.update(1)

    def on_failed(key: str, message: str) -> None:
        with lock:
            failed[key] = message

    try:
        if todo:
            extra = {"on_failed": on_failed} if tolerate else {}
            backend.complete_many(list(todo.items()), on_done, **extra)
    finally:
        if bar is not None:
            bar.close()
    if failed:
        log.warning("%s: %d request(s) failed for good (listed in the judgments, not scored); first: %s",
                    desc, len(failed), next(iter(failed.values())))
    return fresh, failed


def build_judgment_rows(requests: list[JudgeRequest], judge_id: str, cached: dict[str, dict],
                        fresh: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per request, in order. A key's first request answered in this run is ``cached:
    False``; later requests with the same key, and keys found in the cache, are ``cached: True``."""
    rows = []
    seen_fresh: set[str] = set()
    for req in requests:
        key = req.cache_key(judge_id)
        if key in fresh and key not in seen_fresh:
            record, was_cached = fresh[key], False
            seen_fresh.add(key)
        else:  # from the cache, or a duplicate of a request answered earlier in this run
            record, was_cached = cached.get(key) or fresh[key], True
        rows.append(judgment_row(req, record, cached=was_cached, key=key, judge_id=judge_id))
    return rows


def judgment_row(req: JudgeRequest, record: dict[str, Any], *, cached: bool, key: str,
                 judge_id: str) -> dict[str, Any]:
    """One judgments-table row: the request, the raw judge output and the verdict derived from it."""
    label_lp = record.get("label_logprobs")
    verdict, source = decide_verdict(record.get("text"), label_lp, forced=bool(record.get("forced")))
    cand_role, other_role = ROLES[req.kind]
    if record.get("failed"):
        verdict, source, preferred = None, "failed", "failed"
    elif verdict is None:
        preferred = "unparsable"
    else:
        preferred = cand_role if verdict == req.candidate_label else other_role
    lp = label_lp or {}
    return {
        "kind": req.kind,
        "pair_index": req.pair_index,
        "query_id": req.query_id,
        "order": req.order,
        "candidate_label": req.candidate_label,
        "raw": record.get("text", ""),
        "verdict": verdict,
        "preferred": preferred,
        "source": source,
        "logprob_a": lp.get(LABELS[0], math.nan),
        "logprob_b": lp.get(LABELS[1], math.nan),
        "cached": cached,
        "prompt_tokens": int(record.get("prompt_tokens") or 0),
        "completion_tokens": int(record.get("completion_tokens") or 0),
        "judge": judge_id,
        "prompt_version": PROMPT_VERSION,
        "cache_key": key,
        "error": record.get("error", ""),
    }


def compute_pair_outcome(candidate_wins: list[bool | None]) -> str:
    """Outcome of one pair from its two orders (True: candidate preferred; None: unparsable)."""
    if len(candidate_wins) != 2:
        raise ValueError(f"a pair needs exactly two orders, got {len(candidate_wins)}")
    if any(v is None for v in candidate_wins):
        return "unparsable"
    if all(candidate_wins):
        return "win"
    if not any(candidate_wins):
        return "loss"
    return "tie"


def compute_pair_outcomes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (kind, pair_index) with its outcome, from the per-order judgment rows."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["kind"], row["pair_index"]), []).append(row)
    out = []
    for (kind, idx), group in sorted(groups.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1])):
        group = sorted(group, key=lambda r: r["order"])
        cand_role = ROLES[kind][0]
        wins = [None if r["preferred"] == "unparsable" else r["preferred"] == cand_role for r in group]
        outcome = "failed" if any(r["preferred"] == "failed" for r in group) else compute_pair_outcome(wins)
        out.append({"kind": kind, "pair_index": idx, "query_id": group[0]["query_id"], "outcome": outcome})
    return out


def compute_rate(outcomes: list[str]) -> dict[str, Any]:
    """Counts and the tie-as-half rate over the scored (parsable) pairs."""
    counts = {k: sum(1 for o in outcomes if o == k) for k in OUTCOMES}
    unknown = set(outcomes) - set(OUTCOMES)
    if unknown:
        raise ValueError(f"unknown pair outcomes: {sorted(unknown)}")
    scored = counts["win"] + counts["loss"] + counts["tie"]
    rate = (counts["win"] + 0.5 * counts["tie"]) / scored if scored else math.nan
    return {**counts, "n": len(outcomes), "scored": scored, "rate": rate}


def bootstrap_ci(outcomes: list[str], *, seed: int, n_boot: int = 2000,
                 level: float = 0.95) -> tuple[float, float]:
    """Seeded percentile bootstrap CI of the tie-as-half rate (resampling scored pairs)."""
    import numpy as np

    scores = np.array([SCORES[o] for o in outcomes if o in SCORES], dtype=float)
    if scores.size == 0:
        return math.nan, math.nan
    low, high = compute_bootstrap_ci(scores.size, lambda idx: scores[idx].mean(axis=1), seed=seed,
                                     n_boot=n_boot, level=level)
    return float(low), float(high)


def compute_bootstrap_ci(n: int, statistic: Callable[[Any], Any], *, seed: int,
                         n_boot: int = 2000, level: float = 0.95):
    """Percentile CI of ``statistic`` over ``n_boot`` resamples of ``n`` items with replacement.

    ``statistic`` maps an index matrix of shape (n_boot, n) to values of shape (n_boot,) or
    (n_boot, k); returns [low, high] of shape (2,) or (2, k). The one resampling scheme of the
    judge's CIs (:func:`bootstrap_ci`, the LC win rate, the paired differences).
    """
    import numpy as np

    if n < 1 or n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap needs n >= 1, n_boot >= 1 and 0 < level < 1; got n={n}, "
                         f"n_boot={n_boot}, level={level}")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    tail = (1.0 - level) / 2.0
    return np.quantile(statistic(idx), [tail, 1.0 - tail], axis=0)



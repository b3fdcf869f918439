"""The judge a config names, and the budget guard that runs before a remote judge's first request.

Nothing is loaded or connected at import; :func:`make_judge_backend` reads a remote judge's key
(from the variable named in ``[judge] api_key_env``) when it is called, and a local judge loads its
model only when it is first asked (a run whose judgments are all cached never loads it).
"""

from __future__ import annotations

import logging
from typing import Callable

from sso.config import JudgeConfig, SSOConfig
from sso.judge.prompts import JudgeParts, render_judge_messages

log = logging.getLogger("sso.judge")


def make_judge_backend(cfg: SSOConfig):
    """The configured judge: ``LocalJudge`` (default) or ``OpenAIJudge`` (reads the key now)."""
    j = cfg.judge
    if j.backend == "local":
        from sso.judge.local import LocalJudge

        if (j.local_model or cfg.model.name) == cfg.model.name:
            log.warning("the local judge is the policy's own base model (%s): a small model judging "
                        "itself is near chance and position-biased; set [judge] local_model to a "
                        "stronger model, use an endpoint ([judge] backend = 'openai'), or read the "
                        "rule judge's numbers ([principles] source = 'verifiable')", cfg.model.name)
        return LocalJudge(j.local_model or cfg.model.name, dtype=cfg.model.dtype,
                          device=cfg.model.device,
                          revision="" if j.local_model else cfg.model.revision,
                          trust_remote_code=cfg.model.trust_remote_code)
    if j.backend == "openai":
        from sso.judge.transport import OpenAIJudge

        return OpenAIJudge(j)
    raise ValueError(f"[judge] backend must be 'local' or 'openai', got {j.backend!r}")


def make_budget_guard(jcfg: JudgeConfig, what: str
                      ) -> Callable[[dict[str, JudgeParts]], None] | None:
    """For ``backend = 'openai'``: a ``before_start(todo)`` hook for
    :func:`sso.judge.protocol.run_judgments` that estimates the uncached requests (the messages the
    remote judge would send) and raises ``BudgetExceededError`` over ``max_requests`` /
    ``max_cost_usd``; None for a local judge (it costs nothing)."""
    if jcfg.backend != "openai":
        return None
    from sso.judge.transport import check_budget, estimate_run

    def before_start(todo: dict[str, JudgeParts]) -> None:
        estimate = estimate_run([render_judge_messages(*parts) for parts in todo.values()], jcfg.model)
        check_budget(estimate, jcfg, what=what)
        log.info("%s: %d uncached requests, est. ~$%.2f", what, estimate["requests"],
                 estimate["cost_usd"])

    return before_start


def judge_with_config(requests: list, backend, cfg: SSOConfig, what: str, *, progress: bool = True,
                      store=None) -> tuple[list[dict], dict]:
    """:func:`sso.judge.protocol.run_judgments` with what ``[judge]`` says: its cache (``store``, the
    flow's datastore, plus ``cache_dir`` when set), the budget guard and ``max_failed_fraction``.
    Returns (judgment rows, usage). Buffered cache writes are flushed also when it raises."""
    from sso.judge.cache import JudgeCache
    from sso.judge.protocol import run_judgments

    with JudgeCache(cfg.judge.cache_dir or None, shared=store) as cache:
        return run_judgments(requests, backend, cache, progress=progress, desc=what,
                             before_start=make_budget_guard(cfg.judge, what),
                             max_failed_fraction=cfg.judge.max_failed_fraction)

"""A rough wall-time estimate of a whole run, printed by ``start`` before any work.

It counts the tokens each stage generates, scores and trains on (from the config's sizes) and
divides by throughputs measured on a 2-core CPU for the models this project builds offline
(``MEASURED``); for other models it says it has no measurements instead of guessing. Prompt
tokens are approximated by ``PROMPT_TOKENS``; responses by ``max_new_tokens`` (an upper bound).
"""

from __future__ import annotations

from typing import Any

PROMPT_TOKENS = 80            # a rendered chat prompt with a principle, on average
TASK_OVERHEAD_S = 12.0        # start-up of one Metaflow task (interpreter, imports, model load)

# tokens/s on 2 busy cores, float32: generation (batched), scoring (no grad), training (LoRA, fwd+bwd)
MEASURED = {
    "sso-tiny": {"generate": 2500.0, "score": 40000.0, "train": 8000.0},
    "smollm2-135m-instruct": {"generate": 60.0, "score": 320.0, "train": 120.0},
}


def estimate_run(cfg: Any, n_tasks: int = 14) -> dict[str, float] | None:
    """Estimated seconds per stage and in total for ``cfg`` (an ``SSOConfig``); None without rates."""
    rates = MEASURED.get(cfg.model.name)
    if rates is None:
        return None
    d, s, e = cfg.data, cfg.sampling, cfg.eval
    n_gen = d.n_generator_queries or d.n_queries
    arms = len(cfg.policy.arms)
    seq = PROMPT_TOKENS + s.max_new_tokens
    gen_tokens = (2 * d.n_queries + n_gen) * s.max_new_tokens + 2 * d.n_queries * s.max_new_tokens \
        + (1 + arms) * d.n_eval * e.max_new_tokens
    train_tokens = 4 * n_gen * seq * cfg.generator.epochs + arms * 2 * d.n_queries * seq * cfg.policy.epochs
    score_tokens = 4 * n_gen * seq + arms * 2 * d.n_queries * seq \
        + arms * 2 * (d.n_eval * (1 + 1) + min(cfg.judge.accuracy_pairs, d.n_queries)) * 2 * seq
    out = {"sampling": gen_tokens / rates["generate"], "training": train_tokens / rates["train"],
           "scoring and judging": score_tokens / rates["score"], "task start-up": n_tasks * TASK_OVERHEAD_S}
    out["total"] = sum(out.values())
    return out


def format_estimate(cfg: Any) -> str:
    """One console line: the estimate in minutes, or why there is none."""
    est = estimate_run(cfg)
    if est is None:
        return (f"time estimate: no measured throughput for {cfg.model.name!r} "
                f"(measured: {', '.join(MEASURED)})")
    parts = ", ".join(f"{k} ~{v / 60:.1f}" for k, v in est.items() if k != "total")
    return f"time estimate on a 2-core CPU: ~{est['total'] / 60:.0f} min ({parts} min)"

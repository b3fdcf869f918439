"""Step ``sample_responses`` (one foreach task per shard): samples from the initial policy.

Input: one shard of :func:`sso.generation.shards.plan_shards` (its ``rows`` carry query_id, prompt,
generator flag and principle pair; ``eval_rows`` the eval queries), the config and the resolved
model path, or an injected sampler.
Output: ``{"samples", "base_answers"}``: for every train query ``y+ | x+`` and ``y- | x-`` (with
the record columns), for generator queries also ``y_o | x``; a base answer per eval query.
Side effects: loads the policy into the configured sampling engine (released before returning).
"""

from __future__ import annotations

import pandas as pd

from sso.config import SSOConfig
from sso.generation.records import sample_plain, sample_principled
from sso.generation.sampling import Sampler, make_sampler
from sso.progress import progress_bar


def sample_responses(shard: dict, cfg: SSOConfig, model_path: str, *,
                     sampler: Sampler | None = None) -> dict[str, pd.DataFrame]:
    rows, eval_rows = shard["rows"], shard["eval_rows"]
    gen_rows = rows[rows["generator"]]
    own = sampler is None
    sampler = sampler or make_sampler(cfg.sampling, model_path, cfg.model, seed=cfg.run.seed)
    try:
        with progress_bar(2 * len(rows) + len(gen_rows) + len(eval_rows),
                          f"sample shard {shard.get('index', 0)}", unit="prompt") as bar:
            samples = sample_principled(sampler, rows, cfg.generation_params("principled"), progress=bar)
            plain = sample_plain(sampler, gen_rows, cfg.generation_params("plain"), progress=bar)
            base = sample_plain(sampler, eval_rows, cfg.generation_params("eval"), progress=bar)
    finally:
        if own:
            sampler.close()
    y_o = plain[["query_id", "answer", "n_tokens", "finish_reason"]].rename(columns={
        "answer": "y_o", "n_tokens": "y_o_tokens", "finish_reason": "y_o_finish"})
    return {"samples": samples.merge(y_o, on="query_id", how="left"), "base_answers": base}

"""Step ``generate_preferences`` (one foreach task per shard): the generator's y+ and y-.

The trained generator (base model + its LoRA adapter) samples ``y+ | x+`` and ``y- | x-`` for every
train query of the shard (:func:`sso.generation.shards.preference_shards`), with the same
principles and sampling settings as the policy sampling.
Output: one row per query: the record columns (query_id, prompt, principles) and y_plus/y_minus
with token counts and finish reasons.
Side effects: loads base model + adapter into the sampling engine (released before returning).
"""

from __future__ import annotations

import pandas as pd

from sso.config import SSOConfig
from sso.generation.records import sample_principled
from sso.generation.sampling import Sampler, make_sampler
from sso.progress import progress_bar


def generate_preferences(shard: dict, generator_adapter: dict[str, bytes], cfg: SSOConfig,
                         model_path: str, *, sampler: Sampler | None = None) -> pd.DataFrame:
    rows = shard["rows"]
    own = sampler is None
    sampler = sampler or make_sampler(cfg.sampling, model_path, cfg.model, adapter=generator_adapter,
                                      seed=cfg.run.seed)
    try:
        with progress_bar(2 * len(rows), f"generate shard {shard.get('index', 0)}", unit="prompt") as bar:
            return sample_principled(sampler, rows, cfg.generation_params("generator"), progress=bar)
    finally:
        if own:
            sampler.close()

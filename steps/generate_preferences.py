"""Steps ``generate_preferences`` (one foreach task per shard) and ``join_preferences``.

The trained generator (base model + its LoRA adapter) samples ``y+ | x+`` and ``y- | x-`` for every
train query of the shard, with the same principles and sampling settings as the policy sampling.
``join_preferences`` merges shards in query order (whatever order the shards arrive in) and
builds ``sso_pairs``: the DPO records ``(prompt = plain query, chosen = y+, rejected = y-)``
(principles are kept as metadata columns, not in the prompt), dropping and counting degenerate
pairs; its report counts queries, pairs, shards, truncated answers and drops. The shard plan comes
from ``plan_shards`` (``[sampling] shards`` or ``shard_size``). No side effects.
"""

from __future__ import annotations

import pandas as pd

from sso.config import SSOConfig
from sso.progress import progress_bar
from sso.generation.sampling import Sampler

from .sample_responses import _rows, build_sampler, drop_reasons, sample_principled, sampling_params


def generate_preferences(shard: dict, queries: pd.DataFrame, principles: pd.DataFrame,
                         generator_adapter: dict[str, bytes], cfg: SSOConfig, model_path: str, *,
                         sampler: Sampler | None = None) -> pd.DataFrame:
    rows = _rows(queries, shard["query_ids"]).merge(
        principles[["query_id", "good_principle", "bad_principle"]], on="query_id", how="left",
        validate="one_to_one")
    own = sampler is None
    sampler = sampler or build_sampler(cfg, model_path, adapter=generator_adapter)
    try:
        with progress_bar(2 * len(rows), f"generate shard {shard.get('index', 0)}", unit="prompt") as bar:
            return sample_principled(sampler, rows, sampling_params(cfg), progress=bar)
    finally:
        if own:
            sampler.close()


def join_preferences(shard_frames: list[pd.DataFrame], queries: pd.DataFrame,
                     principles: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    gen = pd.concat(shard_frames, ignore_index=True)
    table = queries[["query_id", "prompt"]].merge(gen, on="query_id", how="inner", validate="one_to_one")
    if len(table) != len(queries):
        raise ValueError(f"joined {len(table)} generated queries but {len(queries)} were planned")
    table = table.merge(principles[["query_id", "good_principle", "bad_principle"]], on="query_id",
                        how="left", validate="one_to_one")
    reasons = [drop_reasons(r.y_plus, r.y_minus, None) for r in table.itertuples()]
    counts: dict[str, int] = {}
    for rs in reasons:
        for reason in rs:
            counts[f"pairs_dropped_{reason}"] = counts.get(f"pairs_dropped_{reason}", 0) + 1
    keep = [not rs for rs in reasons]
    pairs = table[keep].rename(columns={"y_plus": "chosen", "y_minus": "rejected"})[
        ["query_id", "prompt", "chosen", "rejected", "good_principle", "bad_principle"]]
    report = {"n_queries": len(table), "n_sso_pairs": len(pairs), "n_shards": len(shard_frames),
              "truncated_principled": int((pd.concat([table["y_plus_finish"], table["y_minus_finish"]])
                                           == "length").sum()),
              **counts}
    return pairs.reset_index(drop=True), report

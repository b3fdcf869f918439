"""Step ``join_preferences``: the SSO preference pairs from the generator's shards.

Merges shards in query order (whatever order they arrive in) and builds ``sso_pairs``: the DPO
records ``(prompt = plain query, chosen = y+, rejected = y-)``; principles stay as metadata
columns, not in the prompt. Degenerate pairs are dropped and counted; the report counts queries,
pairs, shards and truncated answers. Pure.
"""

from __future__ import annotations

import pandas as pd

from sso.generation.records import count_drops, drop_reasons, join_in_order, truncated_count
from sso.generation.shards import PRINCIPLE_COLUMNS


def join_preferences(shard_frames: list[pd.DataFrame], queries: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    table = join_in_order(queries, shard_frames, "generated")
    reasons = [drop_reasons(r.y_plus, r.y_minus, None) for r in table.itertuples()]
    pairs = table[[not rs for rs in reasons]].rename(columns={"y_plus": "chosen", "y_minus": "rejected"})[
        ["query_id", "prompt", "chosen", "rejected", *PRINCIPLE_COLUMNS]]
    report = {"n_queries": len(table), "n_sso_pairs": len(pairs), "n_shards": len(shard_frames),
              "truncated_principled": truncated_count(table), **count_drops("pairs", reasons)}
    return pairs.reset_index(drop=True), report

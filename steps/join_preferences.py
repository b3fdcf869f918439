"""Step ``join_preferences``: the SSO preference pairs from the generator's shards.

Merges shards in query order (whatever order they arrive in) and builds ``sso_pairs``: the DPO
records ``(prompt = plain query, chosen = y+, rejected = y-)``; principles stay as metadata
columns, not in the prompt. Degenerate pairs are dropped and counted; the report counts queries,
pairs, shards and truncated answers. Pairs carry ``chosen_finished`` / ``rejected_finished`` and
the rendered ``x_plain``; a capped response is kept or (``capped = "drop"``) drops its pair. Pure.
"""

from __future__ import annotations

import pandas as pd

from sso.generation.records import count_drops, drop_reasons, finished_columns, join_in_order, truncated_count
from sso.generation.shards import principle_columns


def join_preferences(shard_frames: list[pd.DataFrame], queries: pd.DataFrame, *,
                     capped: str = "keep") -> tuple[pd.DataFrame, dict]:
    table = join_in_order(queries, shard_frames, "generated")
    is_capped = (table["y_plus_finish"] == "length") | (table["y_minus_finish"] == "length")
    reasons = [drop_reasons(r.y_plus, r.y_minus, None, capped=capped == "drop" and c)
               for r, c in zip(table.itertuples(), is_capped)]
    table = table.assign(**finished_columns(table, {"chosen": "y_plus", "rejected": "y_minus"}))
    extra = ["chosen_finished", "rejected_finished", *[c for c in ("x_plain",) if c in table]]
    pairs = table[[not rs for rs in reasons]].rename(columns={"y_plus": "chosen", "y_minus": "rejected"})[
        ["query_id", "prompt", "chosen", "rejected", *principle_columns(table), *extra]]
    report = {"n_queries": len(table), "n_sso_pairs": len(pairs), "n_shards": len(shard_frames),
              "truncated_principled": truncated_count(table), "pairs_capped": int(is_capped.sum()),
              **count_drops("pairs", reasons)}
    return pairs.reset_index(drop=True), report

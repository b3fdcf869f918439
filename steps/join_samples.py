"""Step ``join_samples``: merge the sampled shards and drop degenerate records, counting each reason.

Inputs: the shard results of ``sample_responses`` (any order) and ``queries`` (the planned train
queries, for order and completeness). Records already carry prompt and principles.
Outputs: ``sso_triples`` (generator queries: query_id, prompt, good/bad principle, y_plus, y_minus,
y_o), ``pbaa_pairs`` (all train queries: query_id, prompt, chosen = y+, rejected = y-, principles),
``base_answers`` (query_id, prompt, answer, ...) and ``report`` (counts). Pure.
"""

from __future__ import annotations

import pandas as pd

from sso.generation.records import count_drops, drop_reasons, join_in_order, truncated_count
from sso.generation.shards import PRINCIPLE_COLUMNS


def join_samples(shard_results: list[dict], queries: pd.DataFrame) -> dict:
    table = join_in_order(queries, [r["samples"] for r in shard_results], "sampled")
    base = pd.concat([r["base_answers"] for r in shard_results], ignore_index=True)
    triple_reasons = [drop_reasons(r.y_plus, r.y_minus, r.y_o) if r.generator else None
                      for r in table.itertuples()]
    pair_reasons = [drop_reasons(r.y_plus, r.y_minus, None) for r in table.itertuples()]
    counts = count_drops("triples", [rs for rs in triple_reasons if rs is not None])
    count_drops("pairs", pair_reasons, counts)
    triples = table[[rs == [] for rs in triple_reasons]][
        ["query_id", "prompt", *PRINCIPLE_COLUMNS, "y_plus", "y_minus", "y_o"]]
    pairs = table[[not rs for rs in pair_reasons]][
        ["query_id", "prompt", "y_plus", "y_minus", *PRINCIPLE_COLUMNS]].rename(
        columns={"y_plus": "chosen", "y_minus": "rejected"})
    report = {
        "n_train_queries": len(table), "n_generator_queries": int(table["generator"].sum()),
        "n_sso_triples": len(triples), "n_pbaa_pairs": len(pairs), "n_base_answers": len(base),
        "n_shards": len(shard_results), "truncated_principled": truncated_count(table),
        "mean_tokens_y_plus": float(table["y_plus_tokens"].mean()),
        "mean_tokens_y_minus": float(table["y_minus_tokens"].mean()),
        **counts,
    }
    return {"sso_triples": triples.reset_index(drop=True), "pbaa_pairs": pairs.reset_index(drop=True),
            "base_answers": base, "report": report}

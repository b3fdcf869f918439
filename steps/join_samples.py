"""Step ``join_samples``: merge the sampled shards and drop degenerate records, counting each reason.

Inputs: the shard results of ``sample_responses`` (any order), ``queries`` (the planned train
queries, for order and completeness) and the ``[sampling] capped`` policy. Records already carry
prompt, principles and rendered prompts.
Outputs: ``sso_triples`` (generator queries: query_id, prompt, good/bad principle, y_plus, y_minus,
y_o, their ``*_finished`` flags, and the rendered x_plus / x_minus / x_plain when carried),
``pbaa_pairs`` (all train queries: query_id, prompt, chosen = y+, rejected = y-, principles,
``chosen_finished`` / ``rejected_finished``, x_plain), ``base_answers`` (query_id, prompt, answer,
...) and ``sampling_report`` (counts). A response that hit ``max_new_tokens`` is kept (scored without an
end-of-turn token) or, with ``capped = "drop"``, drops its triple / pair; counted either way.
With ``shard_principles`` (the principle shards of ``generate_principles``) also ``principles``
(one table in query order, every query once) and ``principles_report``; with ``shards`` (the
shard records) also ``shards`` in shard order. Pure.
"""

from __future__ import annotations

import pandas as pd

from sso.data.principles import join_principles, principles_report
from sso.generation.records import count_drops, drop_reasons, finished_columns, join_in_order, truncated_count
from sso.generation.shards import principle_columns


def join_samples(shard_results: list[dict], queries: pd.DataFrame, *, capped: str = "keep",
                 shard_principles: list[pd.DataFrame] | None = None, shards: list[dict] | None = None) -> dict:
    table = join_in_order(queries, [r["samples"] for r in shard_results], "sampled")
    base = pd.concat([r["base_answers"] for r in shard_results], ignore_index=True)
    drop_capped = capped == "drop"
    pair_capped = (table["y_plus_finish"] == "length") | (table["y_minus_finish"] == "length")
    triple_capped = pair_capped | (table["y_o_finish"] == "length")
    triple_reasons = [drop_reasons(r.y_plus, r.y_minus, r.y_o, capped=drop_capped and c) if r.generator else None
                      for r, c in zip(table.itertuples(), triple_capped)]
    pair_reasons = [drop_reasons(r.y_plus, r.y_minus, None, capped=drop_capped and c)
                    for r, c in zip(table.itertuples(), pair_capped)]
    counts = count_drops("triples", [rs for rs in triple_reasons if rs is not None])
    count_drops("pairs", pair_reasons, counts)
    prompts = [c for c in ("x_plus", "x_minus", "x_plain") if c in table]
    table = table.assign(**finished_columns(table, {"y_plus": "y_plus", "y_minus": "y_minus", "y_o": "y_o",
                                                    "chosen": "y_plus", "rejected": "y_minus"}))
    triples = table[[rs == [] for rs in triple_reasons]][
        ["query_id", "prompt", *principle_columns(table), "y_plus", "y_minus", "y_o",
         "y_plus_finished", "y_minus_finished", "y_o_finished", *prompts]]
    pairs = table[[not rs for rs in pair_reasons]][
        ["query_id", "prompt", "y_plus", "y_minus", *principle_columns(table), "chosen_finished", "rejected_finished",
         *[c for c in prompts if c == "x_plain"]]].rename(columns={"y_plus": "chosen", "y_minus": "rejected"})
    report = {
        "n_train_queries": len(table), "n_generator_queries": int(table["generator"].sum()),
        "n_sso_triples": len(triples), "n_pbaa_pairs": len(pairs), "n_base_answers": len(base),
        "n_shards": len(shard_results), "truncated_principled": truncated_count(table),
        "mean_tokens_y_plus": float(table["y_plus_tokens"].mean()),
        "mean_tokens_y_minus": float(table["y_minus_tokens"].mean()),
        "capped_policy": capped, "triples_capped": int((triple_capped & table["generator"]).sum()),
        "pairs_capped": int(pair_capped.sum()),
        **counts,
    }
    out = {"sso_triples": triples.reset_index(drop=True), "pbaa_pairs": pairs.reset_index(drop=True),
           "base_answers": base, "sampling_report": report}
    if shards is not None:
        out["shards"] = sorted(shards, key=lambda sh: sh["index"])
    if shard_principles is not None:
        out["principles"] = join_principles(shard_principles, queries)
        out["principles_report"] = principles_report(out["principles"])
    return out

"""Shard plans for the sampling foreach: contiguous slices of the train and eval queries.

A shard is a plain dict: ``index``, ``query_ids``, ``eval_ids`` and, when principles are given,
the records its task samples from: ``rows`` (query_id, prompt, generator, good_principle,
bad_principle) and ``eval_rows`` (query_id, prompt). This is the one place where principles meet
their queries; every later record carries them on. With a tokenizer the records also carry their
rendered prompts, ``x_plus``, ``x_minus`` and ``x_plain`` (eval rows: ``x_plain``), rendered once
here: sampling, scoring and training all use these strings, so a template that inserts the date
cannot drift between steps.
"""

from __future__ import annotations

import pandas as pd


PRINCIPLE_COLUMNS = ["good_principle", "bad_principle"]


def principle_columns(table: pd.DataFrame) -> list[str]:
    """The principle columns a table carries: the pair, and ``rule_id`` for verifiable principles."""
    return PRINCIPLE_COLUMNS + [c for c in ("rule_id",) if c in table]


def plan_shards(queries: pd.DataFrame, eval_queries: pd.DataFrame | None, n_shards: int, *,
                shard_size: int = 0, principles: pd.DataFrame | None = None, tokenizer=None,
                placement: str = "system") -> list[dict]:
    """Contiguous shards of query ids (and eval ids); at most ``n_shards``, none empty.

    ``shard_size > 0`` overrides ``n_shards``: ``ceil(len(queries) / shard_size)`` shards of
    near-equal size, none larger than ``shard_size``. Eval ids are spread over the same shards.
    With ``principles`` each shard also carries its records (see the module docstring).
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if shard_size < 0:
        raise ValueError(f"shard_size must be >= 0, got {shard_size}")
    q_ids = list(queries["query_id"])
    e_ids = list(eval_queries["query_id"]) if eval_queries is not None else []
    if shard_size:
        n_shards = max(1, -(-len(q_ids) // shard_size))
    n = max(1, min(n_shards, max(len(q_ids), 1)))
    shards = [{"index": i, "query_ids": chunk(q_ids, i, n), "eval_ids": chunk(e_ids, i, n)} for i in range(n)]
    shards = [s for s in shards if s["query_ids"] or s["eval_ids"]]
    if principles is not None:
        shards = [fill_shard(s, queries, eval_queries, principles, tokenizer=tokenizer, placement=placement)
                  for s in shards]
    return shards


def fill_shard(plan: dict, queries: pd.DataFrame, eval_queries: pd.DataFrame | None,
               principles: pd.DataFrame, *, tokenizer=None, placement: str = "system") -> dict:
    """A planned shard with its records: ``rows`` (its train queries with their principle pair,
    which ``principles`` must hold) and ``eval_rows``; rendered prompts with a tokenizer."""
    records = principled_records(select_rows(queries, plan["query_ids"]), principles)
    evals = eval_queries[["query_id", "prompt"]] if eval_queries is not None else pd.DataFrame(
        {"query_id": [], "prompt": []}, dtype=str)
    evals = select_rows(evals, plan["eval_ids"])
    if tokenizer is not None:
        records, evals = render_records(records, tokenizer, placement), render_records(evals, tokenizer, placement)
    return {**plan, "rows": records, "eval_rows": evals}


def preference_shards(shards: list[dict]) -> list[dict]:
    """The shards of the generator's preference sampling: train queries only."""
    return [{**s, "eval_ids": [], "eval_rows": s.get("eval_rows", pd.DataFrame()).iloc[0:0]}
            for s in shards if s["query_ids"]]


def chunk(items: list, i: int, n: int) -> list:
    """The ``i``-th of ``n`` contiguous, near-equal slices of ``items``."""
    size, extra = divmod(len(items), n)
    start = i * size + min(i, extra)
    return items[start:start + size + (1 if i < extra else 0)]


def principled_records(queries: pd.DataFrame, principles: pd.DataFrame) -> pd.DataFrame:
    """query_id, prompt, generator and the principle pair of every train query, in query order."""
    cols = ["query_id", "prompt"] + (["generator"] if "generator" in queries else [])
    extra = [c for c in ("rule_id",) if c in principles]
    rows = queries[cols].merge(principles[["query_id", *PRINCIPLE_COLUMNS, *extra]], on="query_id",
                               how="left", validate="one_to_one")
    if "generator" not in rows:
        rows["generator"] = True
    missing = rows.loc[rows["good_principle"].isna(), "query_id"].tolist()
    if missing:
        raise ValueError(f"no principle for query ids {missing[:5]} (of {len(missing)})")
    return rows


def render_records(rows: pd.DataFrame, tokenizer, placement: str) -> pd.DataFrame:
    """``rows`` with their rendered prompts: ``x_plain`` always, ``x_plus`` / ``x_minus`` when the
    rows carry a principle pair (:func:`sso.generation.chat.render_prompt`)."""
    from sso.generation.chat import render_prompt

    out = rows.assign(x_plain=[render_prompt(tokenizer, q) for q in rows["prompt"]])
    if "good_principle" in rows:
        out["x_plus"] = [render_prompt(tokenizer, r.prompt, r.good_principle, placement=placement)
                         for r in rows.itertuples()]
        out["x_minus"] = [render_prompt(tokenizer, r.prompt, r.bad_principle, placement=placement)
                          for r in rows.itertuples()]
    return out


def select_rows(df: pd.DataFrame, ids: list) -> pd.DataFrame:
    """The rows of ``df`` with these query ids, in the order of ``ids``."""
    by_id = df.set_index("query_id", drop=False)
    unknown = [i for i in ids if i not in by_id.index]
    if unknown:
        raise KeyError(f"unknown query ids in shard: {unknown[:5]}")
    return by_id.loc[list(ids)].reset_index(drop=True)


def triples_as_pairs(triples: pd.DataFrame) -> pd.DataFrame:
    """SSO triples as (prompt, chosen = y+, rejected = y-) pairs: what an arm trained on triples
    prefers, for the judge's preference-data accuracy."""
    keep = ["query_id", "prompt", "y_plus", "y_minus", *principle_columns(triples),
            *[c for c in ("y_plus_finished", "y_minus_finished", "x_plain") if c in triples]]
    return triples[keep].rename(columns={"y_plus": "chosen", "y_minus": "rejected",
                                         "y_plus_finished": "chosen_finished",
                                         "y_minus_finished": "rejected_finished"}).reset_index(drop=True)


def merged_shard(shards: list[dict]) -> dict:
    """All train rows of ``shards`` as one shard without eval rows (one sampler for all of them)."""
    parts = preference_shards(shards)
    return {"index": 0, "query_ids": [q for s in parts for q in s["query_ids"]], "eval_ids": [],
            "rows": pd.concat([s["rows"] for s in parts], ignore_index=True),
            "eval_rows": parts[0]["eval_rows"] if parts else pd.DataFrame()}


ONLINE_FINISHED = ["y_plus_finished", "y_minus_finished", "y_o_finished"]


def online_table(triples: pd.DataFrame, cfg, model_path: str) -> pd.DataFrame:
    """The online objective's table: plain, good- and bad-principle prompts with y+, y-, y_o."""
    if triples.empty:
        raise ValueError("no SSO triples to train on (all sampled records were degenerate); see sampling_report")
    from sso.generation.chat import carried_prompts

    x_plain, x_plus, x_minus = carried_prompts(triples, cfg, model_path, ("x_plain", "x_plus", "x_minus"))
    return pd.DataFrame({
        "query_id": triples["query_id"], "prompt_text": x_plain, "x_plus": x_plus, "x_minus": x_minus,
        "y_plus": triples["y_plus"], "y_minus": triples["y_minus"], "y_o": triples["y_o"],
        **{c: triples[c] for c in ONLINE_FINISHED if c in triples},
    })


def generator_table(triples: pd.DataFrame, cfg, model_path: str) -> pd.DataFrame:
    """The SSO generator's training table: good- and bad-principle prompts with y+, y-, y_o."""
    from sso.generation.chat import carried_prompts

    if triples.empty:
        raise ValueError("no SSO triples to train the generator on (all sampled records were "
                         "degenerate or no generator queries were configured); see sampling_report")
    x_plus, x_minus = carried_prompts(triples, cfg, model_path, ("x_plus", "x_minus"))
    return pd.DataFrame({
        "query_id": triples["query_id"], "x_plus": x_plus, "x_minus": x_minus,
        "y_plus": triples["y_plus"], "y_minus": triples["y_minus"], "y_o": triples["y_o"],
        **{c: triples[c] for c in ONLINE_FINISHED if c in triples},
    })


def policy_table(pairs: pd.DataFrame, cfg, model_path: str, arm: str = "") -> pd.DataFrame:
    """A DPO-style training table: the plain prompt (the string eval answers are sampled from)
    with chosen and rejected."""
    from sso.generation.chat import carried_prompts

    if pairs.empty:
        raise ValueError(f"arm {arm!r} has no preference pairs to train on" if arm else "no preference pairs")
    (x_plain,) = carried_prompts(pairs, cfg, model_path, ("x_plain",))
    return pd.DataFrame({
        "query_id": pairs["query_id"], "prompt_text": x_plain,
        "chosen": pairs["chosen"], "rejected": pairs["rejected"],
        **{c: pairs[c] for c in ("chosen_finished", "rejected_finished") if c in pairs},
    })

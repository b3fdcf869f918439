"""Sampling records: principle-steered and plain completions as typed tables, and drop rules.

Every record keeps the query_id, prompt and principle pair it was sampled for, so no later stage
merges principles back onto queries.

- :func:`sample_principled`  y+ | x+ and y- | x- for shard rows (policy or generator)
- :func:`sample_plain`       one answer per row to the plain prompt x (y_o, base and arm answers)
- :func:`drop_reasons`       why a triple or pair is degenerate; :func:`count_drops` tallies them
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from sso.generation.chat import render_prompt
from sso.generation.sampling import Completion, GenerationParams, Sampler

RECORD_COLUMNS = ["query_id", "prompt", "generator", "good_principle", "bad_principle", "rule_id",
                  "x_plus", "x_minus", "x_plain"]


def prompts_of(sampler: Sampler, rows: pd.DataFrame, column: str, principle: str | None = None) -> list[str]:
    """The rendered prompts of ``rows``: the carried ``column`` (x_plus / x_minus / x_plain), or,
    for rows without it, rendered now from the prompt (and ``principle`` column, system placement)."""
    if column in rows:
        return list(rows[column])
    if principle is None:
        return [render_prompt(sampler.tokenizer, p) for p in rows["prompt"]]
    return [render_prompt(sampler.tokenizer, r.prompt, getattr(r, principle)) for r in rows.itertuples()]


def generate(sampler: Sampler, prompts: list[str], params: GenerationParams, progress=None):
    """``sampler.generate``, advancing ``progress`` (a :func:`sso.progress.progress_bar`) if given."""
    if progress is None:
        return sampler.generate(prompts, params)
    return sampler.generate(prompts, params, progress=progress)


def sample_principled(sampler: Sampler, rows: pd.DataFrame, params: GenerationParams,
                      progress=None) -> pd.DataFrame:
    """``y+ | x+`` and ``y- | x-`` for each row; the row's record columns are kept in front."""
    prompts = prompts_of(sampler, rows, "x_plus", "good_principle") + prompts_of(sampler, rows, "x_minus", "bad_principle")
    out = generate(sampler, prompts, params, progress)
    n = len(rows)
    plus, minus = [c[0] for c in out[:n]], [c[0] for c in out[n:]]
    keep = [c for c in RECORD_COLUMNS if c in rows.columns]
    return typed(rows[keep].reset_index(drop=True).assign(
        **completion_columns("y_plus", plus), **completion_columns("y_minus", minus)))


def sample_plain(sampler: Sampler, rows: pd.DataFrame, params: GenerationParams,
                 progress=None) -> pd.DataFrame:
    """One answer per row to the plain prompt (no principle): query_id, prompt, answer, ..."""
    prompts = prompts_of(sampler, rows, "x_plain")
    first = [c[0] for c in generate(sampler, prompts, params, progress)]
    return typed(pd.DataFrame({
        "query_id": list(rows["query_id"]), "prompt": list(rows["prompt"]), "x_plain": prompts,
        "answer": [c.text for c in first], "n_tokens": [c.n_tokens for c in first],
        "finish_reason": [c.finish_reason for c in first],
    }))


def completion_columns(name: str, completions: list[Completion]) -> dict[str, list]:
    """``name``, ``name_tokens`` and ``name_finish`` columns of one completion per row."""
    return {name: [c.text for c in completions], f"{name}_tokens": [c.n_tokens for c in completions],
            f"{name}_finish": [c.finish_reason for c in completions]}


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed column dtypes, so that an empty shard's frame does not change dtypes in the join."""
    kinds = {c: ("int64" if c.endswith("tokens") else "bool" if c == "generator" else "str")
             for c in df.columns if c != "query_id"}
    return df.astype(kinds)


def finished_columns(table: pd.DataFrame, roles: dict[str, str]) -> dict[str, list[bool]]:
    """``<name>_finished`` flags (the response ended its turn, finish reason "stop") for
    ``roles``: {output name: sampled column}, e.g. {"chosen": "y_plus"}."""
    return {f"{name}_finished": list(table[f"{col}_finish"] == "stop") for name, col in roles.items()}


def drop_reasons(y_plus: str, y_minus: str, y_o: str | None, *, capped: bool = False) -> list[str]:
    """Why an SSO triple (or, with ``y_o=None``, a pair) is degenerate (empty list: keep it).

    ``capped``: a response hit ``max_new_tokens`` and ``[sampling] capped = "drop"``.
    """
    reasons = ["capped"] if capped else []
    if not y_plus.strip() or not y_minus.strip() or (y_o is not None and not y_o.strip()):
        reasons.append("empty_response")
    if y_plus == y_minus:
        reasons.append("y_plus_equals_y_minus")
    if y_o is not None and (y_o == y_plus or y_o == y_minus):
        reasons.append("y_o_equals_principled")
    return reasons


def count_drops(prefix: str, reasons: Iterable[list[str]], counts: dict[str, int] | None = None) -> dict[str, int]:
    """``{prefix}_dropped_{reason}`` counts over per-record reason lists (added to ``counts``)."""
    counts = {} if counts is None else counts
    for rs in reasons:
        for reason in rs:
            key = f"{prefix}_dropped_{reason}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def join_in_order(queries: pd.DataFrame, frames: list[pd.DataFrame], what: str) -> pd.DataFrame:
    """Shard frames concatenated in query order; every planned query exactly once."""
    merged = pd.concat(frames, ignore_index=True)
    table = queries[["query_id"]].merge(merged, on="query_id", how="inner", validate="one_to_one")
    if len(table) != len(queries):
        raise ValueError(f"joined {len(table)} {what} queries but {len(queries)} were planned")
    return table


def truncated_count(table: pd.DataFrame) -> int:
    """How many principled completions (y+ and y-) hit the token cap."""
    return int((pd.concat([table["y_plus_finish"], table["y_minus_finish"]]) == "length").sum())

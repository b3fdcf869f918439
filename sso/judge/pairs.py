"""The pairs one judge run compares, built from the step's tables.

A pair is ``(query_id, instruction, candidate, other)``: the arm's answer vs the base policy's
answer to one eval query (kind ``win_rate``), or a training pair's chosen vs rejected reply (kind
``accuracy``). Missing text (None / NaN) becomes the empty string. Errors are ``ValueError`` /
``TypeError`` naming the table, prefixed ``judge:``.
"""

from __future__ import annotations

import math

import pandas as pd

ANSWER_COLUMNS = ("query_id", "prompt", "answer")
PAIR_COLUMNS = ("query_id", "prompt", "chosen", "rejected")

Pair = tuple[str, str, str, str]


def check_columns(df: pd.DataFrame, name: str, columns: tuple[str, ...]) -> None:
    """Raise unless ``df`` is a DataFrame holding every one of ``columns``."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"judge: {name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"judge: {name} lacks column(s) {missing}; expected {list(columns)}, "
                         f"got {list(df.columns)}")


def text_values(series: pd.Series) -> list[str]:
    """The column as strings, None / NaN as ``""``."""
    return ["" if (v is None or (isinstance(v, float) and math.isnan(v))) else str(v) for v in series]


def build_eval_pairs(answers: pd.DataFrame, base_answers: pd.DataFrame) -> list[Pair]:
    """(query_id, prompt, arm answer, base answer) in the order of ``answers``.

    Both tables must cover the same queries, once each, with the same prompt per query.
    """
    ids = [str(q) for q in answers["query_id"]]
    base_ids = [str(q) for q in base_answers["query_id"]]
    for name, seq in (("answers", ids), ("base_answers", base_ids)):
        dup = sorted({q for q in seq if seq.count(q) > 1})
        if dup:
            raise ValueError(f"judge: {name} has duplicate query_id(s) {dup[:5]}")
    if set(ids) != set(base_ids):
        only_arm = sorted(set(ids) - set(base_ids))[:5]
        only_base = sorted(set(base_ids) - set(ids))[:5]
        raise ValueError(f"judge: answers and base_answers cover different queries "
                         f"(only in answers: {only_arm}; only in base_answers: {only_base})")
    base = dict(zip(base_ids, zip(text_values(base_answers["prompt"]),
                                  text_values(base_answers["answer"]))))
    out = []
    for qid, prompt, answer in zip(ids, text_values(answers["prompt"]), text_values(answers["answer"])):
        base_prompt, base_answer = base[qid]
        if base_prompt != prompt:
            raise ValueError(f"judge: query_id {qid!r} has a different prompt in answers and base_answers")
        out.append((qid, prompt, answer, base_answer))
    return out


def sample_train_pairs(train_pairs: pd.DataFrame, n: int, seed: int) -> list[Pair]:
    """A seeded sample of ``n`` training pairs (all of them if fewer), in their original order:
    (query_id, prompt, chosen, rejected).

    Pairs are ranked by a hash of (``seed``, query_id), not by position, so arms whose pairs cover
    the same queries are judged on the same queries (an arm that dropped a query gets the next one).
    """
    import hashlib

    if n <= 0 or len(train_pairs) == 0:
        return []
    rank = {q: hashlib.sha256(f"{seed}\0{q}".encode()).hexdigest() for q in map(str, train_pairs["query_id"])}
    chosen = set(sorted(rank, key=rank.get)[:max(0, n)])
    rows = train_pairs[[str(q) in chosen for q in train_pairs["query_id"]]]
    return list(zip([str(q) for q in rows["query_id"]], text_values(rows["prompt"]),
                    text_values(rows["chosen"]), text_values(rows["rejected"])))

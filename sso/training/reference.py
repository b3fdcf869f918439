"""The no-grad scoring pass: summed log-probs of every sequence of a table, and on-policyness.

The trainer tokenises every sequence once (:func:`encode_roles`, honouring the table's
``<response>_finished`` columns), drops the examples whose prompt leaves too little room for the
response (:func:`fit_examples`; prompts are never cut), scores every remaining sequence ONCE
under the reference before training (so no reference forward runs during training) and once more
under the trained model for the final accuracies.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from sso.training.objectives import Role, finished_flags, response_columns
from sso.training.policy import autocast, model_device
from sso.training.scoring import Encoded, collate, encode_pairs, min_response_tokens, prompt_fits, sequence_logps

log = logging.getLogger(__name__)

#: how many dropped query ids the summary lists
LISTED_DROPS = 5


def encode_roles(tokenizer, table, roles: tuple[Role, ...]) -> list[list[Encoded]]:
    """Token ids of every (prompt, response) sequence, one list of ``len(table)`` per role; a
    response whose ``<response>_finished`` flag is False gets no end-of-turn token."""
    return [encode_pairs(tokenizer, table[p].tolist(), table[r].tolist(), finished_flags(table, r))
            for _name, p, r in roles]


def _row_ids(table, rows: list[int]) -> list[str]:
    """The query ids of ``rows`` (row positions when the table has no query_id column)."""
    if "query_id" in table.columns:
        return [str(table["query_id"].iloc[i]) for i in rows]
    return [f"row {i}" for i in rows]


def fit_examples(encoded: list[list[Encoded]], table, max_length: int) -> tuple[list[int], dict]:
    """Rows whose every sequence fits ``max_length`` without cutting the prompt, and a report.

    A row is dropped (all its roles) when any of its prompts leaves fewer than
    ``min(len(response), max(1, max_length // 4))`` tokens for the response. The report holds
    ``n_dropped_prompt_too_long`` and ``dropped_prompt_too_long_query_ids`` (the first
    :data:`LISTED_DROPS`). ValueError naming ``[model] max_length`` when every row is dropped.
    """
    n = len(encoded[0]) if encoded else 0
    fits = [all(prompt_fits(len(role[i][0]), len(role[i][1]), max_length) for role in encoded)
            for i in range(n)]
    keep = [i for i in range(n) if fits[i]]
    dropped = [i for i in range(n) if not fits[i]]
    if n and not keep:
        longest = max(len(role[i][0]) for role in encoded for i in range(n))
        need = max(len(p) + min_response_tokens(len(r), max_length) for role in encoded for p, r in role)
        raise ValueError(f"every one of the {n} examples has a prompt too long for [model] max_length = "
                         f"{max_length} (the longest prompt has {longest} tokens; prompts are never cut and "
                         f"each response needs at least min(its length, max_length // 4) tokens): raise "
                         f"[model] max_length (to at least {need}) or shorten the principles/queries")
    if dropped:
        log.warning("dropped %d of %d examples whose prompt leaves too little of max_length %d for the "
                    "response: %s", len(dropped), n, max_length, ", ".join(_row_ids(table, dropped)))
    return keep, {"n_dropped_prompt_too_long": len(dropped),
                  "dropped_prompt_too_long_query_ids": _row_ids(table, dropped[:LISTED_DROPS])}


def count_capped(table, roles: tuple[Role, ...], rows: list[int]) -> int:
    """Responses (cells of the roles' distinct response columns, in ``rows``) marked not finished."""
    return sum(not finished_flags(table, col)[i] for col in response_columns(roles) for i in rows)


def length_sorted_batches(encoded: list[list[Encoded]], seqs_per_batch: int) -> list[list[tuple[int, int]]]:
    """The ``(role, row)`` index of every sequence, length-sorted (little padding) and cut into
    batches of ``seqs_per_batch``; the same on every rank."""
    k, n = len(encoded), len(encoded[0]) if encoded else 0
    flat = sorted(((r, i) for r in range(k) for i in range(n)), key=lambda ri: sum(map(len, encoded[ri[0]][ri[1]])))
    return [flat[s: s + seqs_per_batch] for s in range(0, len(flat), seqs_per_batch)]


@torch.no_grad()
def score_all(model, encoded: list[list[Encoded]], max_length: int, pad_id: int,
              seqs_per_batch: int, progress_desc: str | None = None, *,
              batches: list[list[tuple[int, int]]] | None = None, discard: int = 0,
              scorer=None) -> tuple[Tensor, Tensor, int]:
    """Summed log-probs and token counts ``[k, N]`` of every sequence (model as it is, no grad),
    and the number of sequences truncated to ``max_length``.

    All k*N sequences are length-sorted and scored ``seqs_per_batch`` at a time (little padding,
    bounded memory whatever the number of roles). ``progress_desc``: show progress under that name.
    ``batches``: score only these (:func:`length_sorted_batches`; the others stay 0), the last
    ``discard`` of them only run (a sharded scorer needs every rank in each forward) and their
    results are dropped. ``scorer(batch)``: the forward to call (a
    sharded scorer of ``model``) instead of ``sequence_logps(model, batch)``.
    """
    from sso.progress import progress_bar

    k, n = len(encoded), len(encoded[0]) if encoded else 0
    batches = length_sorted_batches(encoded, seqs_per_batch) if batches is None else batches
    bar = progress_bar(sum(map(len, batches[:len(batches) - discard])), progress_desc or "", unit="seq", enabled=progress_desc is not None)
    logps, ntok = torch.zeros(k, n, dtype=torch.float32), torch.zeros(k, n, dtype=torch.float32)
    n_truncated = 0
    was_training = model.training
    model.eval()
    try:
        for j, part in enumerate(batches):
            rows, cols = zip(*part)
            batch = collate([encoded[r][i] for r, i in zip(rows, cols)], max_length, pad_id)
            with autocast(model_device(model)):
                s, c = scorer(batch) if scorer is not None else sequence_logps(model, batch)
            if j >= len(batches) - discard:
                continue
            logps[list(rows), list(cols)] = s.float().cpu()
            ntok[list(rows), list(cols)] = c.float().cpu()
            n_truncated += int(batch["truncated"].sum())
            bar.update(len(rows))
    finally:
        model.train(was_training)
        bar.close()
    return logps, ntok, n_truncated


def compute_onpolicyness(names: list[str], logps: Tensor, ntok: Tensor) -> dict[str, float]:
    """Mean per-token probability exp(a(y|x)) of each role (rows of ``[k, N]``), averaged over
    examples, as ``onpolicy_<name>``."""
    return {f"onpolicy_{name}": float(torch.exp(logps[i] / ntok[i].clamp(min=1)).mean())
            for i, name in enumerate(names)}

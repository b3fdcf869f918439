"""Response log-prob scoring: batching (prompt, response) sequences and one forward pass per batch.

The contract (see :mod:`sso.chat`): prompt and response are tokenised separately and their ids
concatenated; the response ends with the end-of-turn token; only response tokens (end-of-turn
included) count. Batches are right-padded (training layout). A sequence longer than
``max_length`` loses response tokens from the right first; the response keeps at least
``min(len(response), max(1, max_length // 4))`` tokens, and the prompt then loses tokens from the
LEFT (its end, the assistant header, stays adjacent to the response).

- :func:`build_batch`   strings -> padded tensors (``input_ids``, ``attention_mask``, ``loss_mask``,
  ``truncated``).
- :func:`sequence_logps` model + batch -> summed response log-probs and response token counts.
- :func:`score_responses` no-grad scoring of many pairs -> DataFrame (reference log-probs,
  on-policyness).
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import Tensor

from .chat import encode_prompt, encode_response

Encoded = tuple[list[int], list[int]]   # (prompt ids, response ids incl. end-of-turn)


def encode_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> list[Encoded]:
    """Tokenise prompts and responses separately (identical prompts are tokenised once)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    cache: dict[str, list[int]] = {}
    out = []
    for prompt, response in zip(prompts, responses):
        if prompt not in cache:
            cache[prompt] = encode_prompt(tokenizer, prompt)
        out.append((cache[prompt], encode_response(tokenizer, response)))
    return out


def truncate_pair(prompt_ids: list[int], response_ids: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """Fit one sequence into ``max_length``: cut the response from the right, then the prompt from the left."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one prompt and one response token), got {max_length}")
    if len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids, response_ids, False
    min_response = min(len(response_ids), max(1, max_length // 4))
    keep_response = max(min_response, max_length - len(prompt_ids))
    response_ids = response_ids[:keep_response]
    keep_prompt = max_length - len(response_ids)
    return prompt_ids[len(prompt_ids) - keep_prompt:], response_ids, True


def collate(encoded: Sequence[Encoded], max_length: int, pad_id: int) -> dict[str, Tensor]:
    """Concatenate prompt+response ids, truncate, right-pad once; masks mark response tokens."""
    rows, masks, truncated = [], [], []
    for prompt_ids, response_ids in encoded:
        if not prompt_ids or not response_ids:
            raise ValueError("every sequence needs at least one prompt and one response token")
        p, r, cut = truncate_pair(prompt_ids, response_ids, max_length)
        rows.append(p + r)
        masks.append([0] * len(p) + [1] * len(r))
        truncated.append(cut)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)   # [B, T]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)     # [B, T]
    loss_mask = torch.zeros((len(rows), width), dtype=torch.long)          # [B, T]
    for i, (ids, m) in enumerate(zip(rows, masks)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        loss_mask[i, : len(ids)] = torch.tensor(m)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
            "truncated": torch.tensor(truncated, dtype=torch.bool)}


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an eos token")
    return int(pad)


def build_batch(tokenizer, prompts: list[str], responses: list[str], max_length: int) -> dict[str, Tensor]:
    """Padded training batch of ``prompt + response`` sequences.

    Returns ``input_ids`` [B, T], ``attention_mask`` [B, T], ``loss_mask`` [B, T] (1 exactly on the
    response tokens incl. end-of-turn) and ``truncated`` [B] (bool; ``int(batch["truncated"].sum())``
    counts the sequences that were cut to ``max_length``). Right padding.
    """
    return collate(encode_pairs(tokenizer, prompts, responses), max_length, _pad_id(tokenizer))


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cached = getattr(base, "_sso_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(base.forward).parameters
        base._sso_logits_to_keep = cached
    return cached


def sequence_logps(model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Summed response log-probs ``[B]`` and response token counts ``[B]`` in ONE forward pass.

    Logits are only materialised from the first response position of the batch onwards (the
    prompt-only prefix needs none), and log-softmax is computed in float32.
    """
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)                  # [B, T]
    attention_mask = batch["attention_mask"].to(device)        # [B, T]
    loss_mask = batch["loss_mask"].to(device)                  # [B, T]
    width = input_ids.shape[1]
    start = int(loss_mask.any(dim=0).nonzero()[0])             # first response column, >= 1
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if _accepts_logits_to_keep(model):
        # logits at position t predict token t+1: keep positions start-1 .. T-2
        kwargs["logits_to_keep"] = torch.arange(start - 1, width - 1, device=device)
        logits = model(**kwargs).logits                         # [B, T-start, V]
    else:
        logits = model(**kwargs).logits[:, start - 1: width - 1]
    targets = input_ids[:, start:]                              # [B, T-start]
    mask = loss_mask[:, start:].to(torch.float32)               # [B, T-start]
    logits = logits.float()
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logps * mask).sum(dim=-1), mask.sum(dim=-1)


def score_responses(model, tokenizer, prompts: list[str], responses: list[str], *, max_length: int,
                    batch_size: int):
    """No-grad log-probs of each response given its prompt, as a DataFrame in input order.

    Columns: ``logp_sum`` (summed response log-prob), ``n_tokens`` (response tokens incl.
    end-of-turn, after truncation), ``logp_mean`` (``a(y|x)``), ``truncated``. Sequences are
    length-sorted into batches of ``batch_size``; the model is put in eval mode for the pass and
    restored afterwards.
    """
    import pandas as pd

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = encode_pairs(tokenizer, prompts, responses)
    pad_id = _pad_id(tokenizer)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    logp = torch.zeros(len(encoded), dtype=torch.float64)
    ntok = torch.zeros(len(encoded), dtype=torch.long)
    cut = torch.zeros(len(encoded), dtype=torch.bool)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(0, len(order), batch_size):
                idx = order[b: b + batch_size]
                batch = collate([encoded[i] for i in idx], max_length, pad_id)
                s, n = sequence_logps(model, batch)
                logp[idx] = s.double().cpu()
                ntok[idx] = n.long().cpu()
                cut[idx] = batch["truncated"]
    finally:
        model.train(was_training)
    return pd.DataFrame({"logp_sum": logp.numpy(), "n_tokens": ntok.numpy(),
                         "logp_mean": (logp / ntok.clamp(min=1)).numpy(), "truncated": cut.numpy()})

"""Response log-prob scoring: batching (prompt, response) sequences and one forward pass per batch.

The contract (see :mod:`sso.generation.chat`): prompt and response are tokenised separately and their ids
concatenated; a finished response ends with the end-of-turn token, a response capped at
``max_new_tokens`` does not; only response tokens (end-of-turn included) count. Batches are
right-padded (training layout). The prompt is never cut (it holds the principle): a sequence
longer than ``max_length`` loses response tokens from the right (so a cut response loses its
end-of-turn token too, it is no longer finished). A prompt that leaves fewer than
:func:`min_response_tokens` for its response does not fit (:func:`prompt_fits`); the trainer drops
such examples before training, and :func:`truncate_pair` refuses them.

- :func:`encode_pairs` + :func:`collate`  strings -> padded tensors (``input_ids``,
  ``attention_mask``, ``loss_mask``, ``truncated``).
- :func:`sequence_logps` model + batch -> summed response log-probs and response token counts.
  (No-grad reference scoring and on-policyness live in :mod:`sso.training.reference`.)
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import Tensor

from sso.generation.chat import encode_prompt, encode_response
from sso.training.logprobs import chunked_token_logps, rows_per_chunk

Encoded = tuple[list[int], list[int]]   # (prompt ids, response ids; end-of-turn last when finished)


def encode_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str],
                 finished: Sequence[bool] | None = None) -> list[Encoded]:
    """Tokenise prompts and responses separately (identical prompts are tokenised once).

    ``finished[i]`` False: response ``i`` was capped at ``max_new_tokens`` and gets no end-of-turn
    token. None: every response is finished.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if finished is None:
        finished = [True] * len(responses)
    elif len(finished) != len(responses):
        raise ValueError(f"{len(finished)} finished flags but {len(responses)} responses")
    cache: dict[str, list[int]] = {}
    out = []
    for prompt, response, done in zip(prompts, responses, finished):
        if prompt not in cache:
            cache[prompt] = encode_prompt(tokenizer, prompt)
        out.append((cache[prompt], encode_response(tokenizer, response, finished=bool(done))))
    return out


def min_response_tokens(response_len: int, max_length: int) -> int:
    """Response tokens a sequence must keep: ``min(response_len, max(1, max_length // 4))``."""
    return min(response_len, max(1, max_length // 4))


def prompt_fits(prompt_len: int, response_len: int, max_length: int) -> bool:
    """True when a prompt of ``prompt_len`` tokens leaves at least :func:`min_response_tokens`
    of ``max_length`` for its response (the prompt itself is never cut)."""
    return max_length - prompt_len >= min_response_tokens(response_len, max_length)


def truncate_pair(prompt_ids: list[int], response_ids: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """Fit one sequence into ``max_length`` by cutting the response from the right (never the prompt).

    Returns (prompt ids, kept response ids, truncated). ValueError when the prompt does not fit
    (:func:`prompt_fits`): such examples must be dropped before scoring.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one prompt and one response token), got {max_length}")
    if len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids, response_ids, False
    if not prompt_fits(len(prompt_ids), len(response_ids), max_length):
        need = min_response_tokens(len(response_ids), max_length)
        raise ValueError(f"a prompt of {len(prompt_ids)} tokens leaves {max_length - len(prompt_ids)} of "
                         f"max_length {max_length} for its response, at least {need} needed; the prompt "
                         f"is never cut: raise [model] max_length or drop the example")
    return prompt_ids, response_ids[: max_length - len(prompt_ids)], True


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


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an eos token")
    return int(pad)


#: config attributes of models whose logits are NOT ``lm_head(last_hidden_state)``
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head_split(model):
    """(decoder, lm_head) when logits are exactly ``lm_head(decoder(...).last_hidden_state)``, else None.

    Checked once per model (config flags, then one tiny probe compared with the full forward in
    eval mode) and cached on the model.
    """
    base = _base_model(model)
    if "_sso_head_split" in base.__dict__:
        return base.__dict__["_sso_head_split"]
    split = None
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is not None and head is not None and decoder is not base and \
            not any(getattr(base.config, a, None) for a in _LOGIT_TRANSFORMS):
        device = next(base.parameters()).device
        ids = torch.arange(3, 11, device=device).unsqueeze(0) % base.config.vocab_size   # [1, 8]
        was_training = base.training
        base.eval()
        try:
            with torch.no_grad():
                full = base(input_ids=ids, use_cache=False).logits.float()
                parts = head(decoder(input_ids=ids, use_cache=False).last_hidden_state).float()
        finally:
            base.train(was_training)
        if full.shape == parts.shape and torch.allclose(full, parts, rtol=1e-4, atol=1e-4 * float(full.abs().max())):
            split = (decoder, head)
    base.__dict__["_sso_head_split"] = split
    return split


def _accepts_logits_to_keep(model) -> bool:
    base = _base_model(model)
    if "_sso_logits_to_keep" not in base.__dict__:
        base.__dict__["_sso_logits_to_keep"] = "logits_to_keep" in inspect.signature(base.forward).parameters
    return base.__dict__["_sso_logits_to_keep"]


def _chunkable_head(head) -> bool:
    """True for a plain ``nn.Linear`` with no hooks or patched ``forward`` (peft/accelerate wrappers are not)."""
    return (type(head) is torch.nn.Linear and not head._forward_hooks and not head._forward_pre_hooks
            and "forward" not in head.__dict__)


def _full_logits(model, kwargs: dict, scored: Tensor) -> Tensor:
    """Fallback: logits ``[N, V]`` from the model's own forward, from the first scored column on."""
    start = int(scored.any(dim=0).nonzero()[0])
    if _accepts_logits_to_keep(model):
        kwargs = {**kwargs, "logits_to_keep": torch.arange(start, scored.shape[1], device=scored.device)}
        logits = model(**kwargs).logits                                 # [B, T-1-start, V]
    else:
        logits = model(**kwargs).logits[:, start:-1]
    return logits[scored[:, start:]]                                    # [N, V]


def _response_token_logps(model, input_ids: Tensor, attention_mask: Tensor, scored: Tensor) -> Tensor:
    """Float32 log-prob ``[N]`` of each response token: the N positions where ``scored`` [B, T-1] is set.

    Preferred: run the decoder, pick the N hidden states and apply the LM head to those only
    (prompt and padding positions never reach the vocabulary projection); a plain ``nn.Linear``
    head goes through :func:`chunked_token_logps`, so no ``[N, V]`` float32 logits exist at once.
    Otherwise (a wrapped head, e.g. peft LoRA on ``lm_head``): the head's own forward and a
    float32 log-softmax. Fallback when the head split does not verify: the model's own forward,
    from the first scored column on (``logits_to_keep``) or in full.
    """
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    targets = input_ids[:, 1:][scored]                                  # [N]
    split = _head_split(model)
    if split is None:
        logits = _full_logits(model, kwargs, scored).float()            # [N, V]
    else:
        decoder, _ = split
        head = _base_model(model).get_output_embeddings()               # now: may be wrapped since the check
        hidden = decoder(**kwargs).last_hidden_state[:, :-1][scored]    # [N, H]
        if _chunkable_head(head):
            rows = rows_per_chunk(head.weight.shape[0])
            return chunked_token_logps(hidden, head.weight, targets, bias=head.bias, chunk_size=rows)
        logits = head(hidden).float()                                   # [N, V]
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Summed response log-probs ``[B]`` and response token counts ``[B]`` in ONE forward pass.

    Only the positions that predict a response token reach the LM head, and log-probs are computed
    in float32 (see :func:`_response_token_logps`).
    """
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)                  # [B, T]
    attention_mask = batch["attention_mask"].to(device)        # [B, T]
    scored = batch["loss_mask"].to(device)[:, 1:].bool()       # [B, T-1]: position t predicts token t+1
    token_logps = _response_token_logps(model, input_ids, attention_mask, scored)   # [N]
    rows = scored.nonzero()[:, 0]                              # [N] sequence of each scored token
    summed = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=device).index_add(0, rows, token_logps)
    return summed, scored.sum(dim=-1).to(torch.float32)

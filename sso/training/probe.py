"""A fixed-input logits fingerprint of a model, to prove a saved adapter reloads to the same model.

The trainer records :func:`compute_logits_probe` of the trained (in-memory) model in its summary
(``summary["logits_probe"]``); after an adapter travelled through the datastore and an export
directory, ``PeftModel.from_pretrained(base, dir)`` must give the same numbers
(:func:`probe_matches`). The input is a fixed, seeded-free token sequence spread over the
vocabulary, so the probe needs no tokenizer.
"""

from __future__ import annotations

import math

PROBE_LENGTH = 16
TOP_K = 5


def probe_input_ids(vocab_size: int, length: int = PROBE_LENGTH) -> list[int]:
    """``length`` token ids spread over ``[0, vocab_size)`` (a fixed function of the vocab size)."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    return [(7919 * (i + 1) + 13) % vocab_size for i in range(length)]


def compute_logits_probe(model, length: int = PROBE_LENGTH) -> dict:
    """Sum, absolute sum and last-position top-k of the logits on the fixed probe input (eval mode,
    no grad, float32 reductions). The model's train/eval mode is restored afterwards."""
    import torch

    config = model.config
    ids = probe_input_ids(int(config.vocab_size), length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].double()  # [T, V]
    finally:
        model.train(was_training)
    top = torch.topk(logits[-1], k=min(TOP_K, logits.shape[-1]))
    return {"input_ids": ids, "sum": float(logits.sum()), "abs_sum": float(logits.abs().sum()),
            "top_ids": [int(i) for i in top.indices], "top_logits": [float(v) for v in top.values]}


def probe_matches(expected: dict, actual: dict, *, rtol: float = 1e-4, atol: float = 1e-3) -> bool:
    """Whether two probes agree (same input, close sums and top-k logits)."""
    if expected.get("input_ids") != actual.get("input_ids"):
        return False
    close = lambda a, b: math.isclose(a, b, rel_tol=rtol, abs_tol=atol)  # noqa: E731
    if not (close(expected["sum"], actual["sum"]) and close(expected["abs_sum"], actual["abs_sum"])):
        return False
    return all(close(a, b) for a, b in zip(expected["top_logits"], actual["top_logits"]))

"""Log-probs of target tokens under a linear LM head, without a ``[N, V]`` float32 logits tensor.

``log p(t_i | h_i) = z_i[t_i] - logsumexp_j z_i[j]`` with logits ``z = h W^T + b``. A plain
implementation materialises ``z`` for all N rows at once (``N * V * 4`` bytes in float32: 4.9 GB
for 8,192 tokens and a 150k vocabulary), then a log-softmax copy and its gradient.
:func:`chunked_token_logps` walks the rows in chunks instead: the forward pass keeps only the
per-row logsumexp (``[N]``) besides its inputs, and the backward pass recomputes each chunk's
logits, turns them into the gradient of the logits in place and accumulates the gradients of the
hidden states, the weight and the bias chunk by chunk. The extra memory is then about one chunk
of logits (``chunk_size * V * 4`` bytes), plus a float32 copy of the weight when it is not
float32 already, plus the float32 gradient buffer of the weight when it needs one.

- :func:`chunked_token_logps` hidden ``[N, H]``, weight ``[V, H]``, targets ``[N]`` -> log-probs ``[N]``.
- :func:`rows_per_chunk`      chunk size that keeps one float32 chunk of logits under a byte budget.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

#: default budget for one float32 chunk of logits (``rows * V * 4`` bytes)
CHUNK_BUDGET_BYTES = 256 * 2**20


def rows_per_chunk(vocab_size: int, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """Rows per chunk so that one float32 chunk of logits ``[rows, vocab_size]`` fits ``budget_bytes``.

    At least 1 row; e.g. 447 rows for a 150k vocabulary and the default 256 MiB.
    """
    if vocab_size < 1 or budget_bytes < 1:
        raise ValueError(f"vocab_size and budget_bytes must be >= 1, got {vocab_size} and {budget_bytes}")
    return max(1, budget_bytes // (4 * vocab_size))


def _chunk_logits(hidden32: Tensor, weight32: Tensor, bias32: Tensor | None) -> Tensor:
    """Float32 logits ``[c, V]`` of one chunk: ``hidden32 [c, H] @ weight32.T [H, V] (+ bias32 [V])``."""
    if bias32 is None:
        return hidden32 @ weight32.T
    return torch.addmm(bias32, hidden32, weight32.T)


class _ChunkedTokenLogps(torch.autograd.Function):
    """Autograd function behind :func:`chunked_token_logps` (saves inputs and ``[N]`` logsumexp only)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                chunk_size: int) -> Tensor:
        weight32 = weight.float()                                            # [V, H] (no copy if fp32)
        bias32 = None if bias is None else bias.float()                      # [V]
        n = hidden.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)      # [N]
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)      # [N]
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            logits = _chunk_logits(hidden[s:e].float(), weight32, bias32)    # [c, V]
            target_logit = logits.gather(1, targets[s:e, None]).squeeze(1)   # [c]
            peak = logits.amax(dim=1, keepdim=True)                          # [c, 1]
            lse[s:e] = logits.sub_(peak).exp_().sum(dim=1).log_() + peak.squeeze(1)
            out[s:e] = target_logit - lse[s:e]
            del logits                                                       # before the next chunk's
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if not (need_h or need_w or need_b):
            return None, None, None, None, None
        weight32 = weight.float()                                            # [V, H]
        bias32 = None if bias is None else bias.float()                      # [V]
        grad_h = torch.empty_like(hidden) if need_h else None                # [N, H] input dtype
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        n, step = hidden.shape[0], ctx.chunk_size
        for s in range(0, n, step):
            e = min(s + step, n)
            hidden32 = hidden[s:e].float()                                   # [c, H]
            g = grad_out[s:e].float().unsqueeze(1)                           # [c, 1]
            # d out_i / d z_ij = 1[j == t_i] - softmax_ij, built in place in the logits buffer
            grad_z = _chunk_logits(hidden32, weight32, bias32)               # [c, V]
            grad_z.sub_(lse[s:e, None]).exp_().mul_(-g).scatter_add_(1, targets[s:e, None], g)
            if need_h:
                grad_h[s:e] = grad_z @ weight32                              # [c, H]
            if need_w:
                grad_w.addmm_(grad_z.T, hidden32)                            # [V, H]
            if need_b:
                grad_b += grad_z.sum(dim=0)                                  # [V]
            del grad_z                                                       # before the next chunk's
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None


def _check_inputs(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None, chunk_size: int) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H] and weight [V, H] with the same H, got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if not (hidden.is_floating_point() and weight.is_floating_point()):
        raise ValueError(f"expected floating-point hidden and weight, got {hidden.dtype} and {weight.dtype}")
    if targets.shape != (hidden.shape[0],) or targets.dtype != torch.long:
        raise ValueError(f"expected targets [N={hidden.shape[0]}] of dtype torch.long, got "
                         f"{tuple(targets.shape)} of {targets.dtype}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"expected bias [V={weight.shape[0]}], got {tuple(bias.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= weight.shape[0]):
        raise ValueError(f"targets must lie in [0, V={weight.shape[0]}), got [{int(targets.min())}, "
                         f"{int(targets.max())}]")


def chunked_token_logps(hidden: Tensor, weight: Tensor, targets: Tensor, *, bias: Tensor | None = None,
                        chunk_size: int = 1024) -> Tensor:
    """Log-prob ``[N]`` (float32) of each target token under logits ``hidden @ weight.T + bias``.

    Equals ``torch.log_softmax((hidden @ weight.T + bias).float(), -1).gather(-1, targets[:, None])[:, 0]``
    computed in float32 from upcast inputs, without ever holding more than ``chunk_size`` rows of
    logits. Differentiable w.r.t. ``hidden`` ``[N, H]``, ``weight`` ``[V, H]`` and ``bias`` ``[V]``;
    gradients come back in the inputs' dtypes (e.g. bfloat16) and are skipped for inputs that do
    not require grad (a frozen LM head). A weight shared with the input embedding (tied
    embeddings) gets its two gradient contributions summed by autograd as usual. Not twice
    differentiable.

    ``targets`` ``[N]`` are token ids (``torch.long``) in ``[0, V)``; ``chunk_size`` is the number
    of rows per chunk (see :func:`rows_per_chunk`). The target range check reads two numbers from
    the device.
    """
    _check_inputs(hidden, weight, targets, bias, chunk_size)
    return _ChunkedTokenLogps.apply(hidden, weight, bias, targets, chunk_size)

"""The no-grad scoring pass: summed log-probs of every sequence of a table, and on-policyness.

The trainer scores every sequence ONCE under the reference before training (so no reference
forward runs during training) and once more under the trained model for the final accuracies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sso.training.objectives import Role
from sso.training.policy import autocast, model_device
from sso.training.scoring import Encoded, collate, encode_pairs, sequence_logps


def encode_roles(tokenizer, table, roles: tuple[Role, ...]) -> list[list[Encoded]]:
    """Token ids of every (prompt, response) sequence, one list of ``len(table)`` per role."""
    return [encode_pairs(tokenizer, table[p].tolist(), table[r].tolist()) for _name, p, r in roles]


@torch.no_grad()
def score_all(model, encoded: list[list[Encoded]], max_length: int, pad_id: int,
              seqs_per_batch: int, progress_desc: str | None = None) -> tuple[Tensor, Tensor, int]:
    """Summed log-probs and token counts ``[k, N]`` of every sequence (model as it is, no grad),
    and the number of sequences truncated to ``max_length``.

    All k*N sequences are length-sorted and scored ``seqs_per_batch`` at a time (little padding,
    bounded memory whatever the number of roles). ``progress_desc``: show progress under that name.
    """
    from sso.progress import progress_bar

    k, n = len(encoded), len(encoded[0]) if encoded else 0
    bar = progress_bar(k * n, progress_desc or "", unit="seq", enabled=progress_desc is not None)
    logps, ntok = torch.zeros(k, n, dtype=torch.float32), torch.zeros(k, n, dtype=torch.float32)
    flat = sorted(((r, i) for r in range(k) for i in range(n)), key=lambda ri: sum(map(len, encoded[ri[0]][ri[1]])))
    n_truncated = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(flat), seqs_per_batch):
            rows, cols = zip(*flat[start: start + seqs_per_batch])
            batch = collate([encoded[r][i] for r, i in zip(rows, cols)], max_length, pad_id)
            with autocast(model_device(model)):
                s, c = sequence_logps(model, batch)
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

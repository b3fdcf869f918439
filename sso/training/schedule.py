"""The trainer's data order and learning-rate curve, as pure functions of the config and seed.

The data order is one seeded permutation per epoch, so a checkpoint's data position is just the
number of optimizer steps taken; :func:`build_schedule` also tells a live card how many steps a
run will take before it starts.
"""

from __future__ import annotations

import math

import torch

from sso.config import TrainConfig


def build_schedule(n_examples: int, cfg: TrainConfig, seed: int) -> list[tuple[int, list[list[int]]]]:
    """Every optimizer step as (epoch, micro-batches of row indices); a pure function of the seed.

    Each epoch is a seeded permutation cut into micro-batches of ``cfg.batch_size`` rows, grouped
    ``cfg.grad_accum`` at a time (the last group of an epoch may be shorter). ``cfg.max_steps > 0``
    caps the number of steps.
    """
    steps = []
    for epoch in range(cfg.epochs):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n_examples, generator=gen).tolist()
        micro = [perm[i: i + cfg.batch_size] for i in range(0, n_examples, cfg.batch_size)]
        steps += [(epoch, micro[i: i + cfg.grad_accum]) for i in range(0, len(micro), cfg.grad_accum)]
    return steps[: cfg.max_steps] if cfg.max_steps > 0 else steps


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay; step ``s`` uses a non-zero rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_epoch(n_examples: int, cfg: TrainConfig) -> int:
    """Optimizer steps in one full epoch of ``n_examples`` rows (micro-batches / grad_accum, rounded up)."""
    return math.ceil(math.ceil(n_examples / cfg.batch_size) / cfg.grad_accum)

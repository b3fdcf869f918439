"""Training checkpoints: atomic ``step-NNNNNNNN/`` directories a new call resumes from.

A checkpoint holds ``state.pt`` (the loop state: step, history, counters, run fingerprint and
reference report; the trainable parameters, optimizer, scheduler and RNG states; the reference
log-probs, so that no reference pass runs again) and, for LoRA, ``adapter/`` (the peft adapter as
saved by ``save_pretrained``; a fully fine-tuned model's weights are all in ``state.pt`` already). Only the newest checkpoint is kept. The fingerprint
(:func:`compute_fingerprint`) ties a checkpoint to its objective, data, config, seed and starting
adapter: checkpoints live in ``<checkpoint_dir>/<fingerprint[:16]>/``, so a run only ever finds its
own. :func:`find_checkpoint` looks there first and then in earlier runs' directories (the origin
run of a ``resume``): a resumed run continues from the failed run's last checkpoint when nothing
that decides the training changed, and otherwise starts fresh and says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from sso.config import ModelConfig, TrainConfig
from sso.training.objectives import Objective, finished_flags, response_columns
from sso.training.policy import is_peft_model

CHECKPOINT_PREFIX = "step-"


def compute_fingerprint(objective: Objective, table, cfg: TrainConfig, seed: int,
                        init_adapter: dict[str, bytes] | None) -> str:
    """Identity of a run for checkpoint matching (sha256 hex): objective, data, config, seed,
    starting adapter."""
    h = hashlib.sha256()
    h.update(json.dumps([objective.name, seed, repr(cfg)]).encode())
    for name in sorted(init_adapter or {}):
        h.update(name.encode() + b"\x00" + init_adapter[name])
    for col in objective.columns:
        for value in table[col].tolist():
            h.update(value.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
    return h.hexdigest()


def run_fingerprint(objective: Objective, table, cfg: TrainConfig, model_cfg: ModelConfig, seed: int,
                    init_adapter) -> str:
    """:func:`compute_fingerprint` extended by what else changes the scored sequences: the
    finished flags of every response column and ``max_length`` (sha256 hex)."""
    flags = [finished_flags(table, col) for col in response_columns(objective.roles)]
    extra = json.dumps([model_cfg.max_length, flags]).encode()
    return hashlib.sha256(compute_fingerprint(objective, table, cfg, seed, init_adapter).encode() + extra).hexdigest()


def trainable_state(model) -> dict[str, Tensor]:
    """CPU copies of the parameters that require grad, by name."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    """The torch CPU (and, when present, every CUDA device's) RNG state."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(checkpoint_dir: str, state: dict, model) -> Path:
    """Atomically write ``<fingerprint[:16]>/step-NNNNNNNN/`` (state.pt, + the peft adapter for
    LoRA) and drop older ones."""
    root = Path(fingerprint_dir(checkpoint_dir, state["fingerprint"]))
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    torch.save(state, tmp / "state.pt")
    if is_peft_model(model):
        model.save_pretrained(tmp / "adapter")
    target = root / f"{CHECKPOINT_PREFIX}{state['step']:08d}"
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    for old in root.glob(f"{CHECKPOINT_PREFIX}*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def save_training_checkpoint(checkpoint_dir: str, state: dict, model, opt, sched,
                             ref_logps: Tensor, gathered: tuple[dict, dict] | None = None) -> Path:
    """The loop ``state`` plus trainable parameters, optimizer, scheduler, RNG and the reference
    log-probs ``[k, N]``, written by :func:`save_checkpoint`. ``gathered``: (trainable, optimizer)
    of a sharded model as :func:`sso.training.sharding.gather_state` gave them to rank 0 (no
    adapter directory is written then)."""
    trainable, optimizer = gathered or (trainable_state(model), opt.state_dict())
    ckpt = {**state, "trainable": trainable, "optimizer": optimizer,
            "scheduler": sched.state_dict(), "rng": rng_state(), "ref_logps": ref_logps}
    return save_checkpoint(checkpoint_dir, ckpt, None if gathered else model)


def load_checkpoint(checkpoint_dir: str | None) -> dict | None:
    """The newest complete checkpoint's state under ``checkpoint_dir``, or None."""
    if not checkpoint_dir or not Path(checkpoint_dir).is_dir():
        return None
    done = sorted(p for p in Path(checkpoint_dir).glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.pt").is_file())
    if not done:
        return None
    return torch.load(done[-1] / "state.pt", map_location="cpu", weights_only=True)


def fingerprint_dir(root: str, fingerprint: str) -> str:
    """Where the checkpoints of one fingerprint live under a checkpoint root."""
    return os.path.join(root, fingerprint[:16])


def load_matching_checkpoint(checkpoint_dir: str | None, fingerprint: str) -> dict | None:
    """:func:`load_checkpoint` of ``checkpoint_dir/<fingerprint[:16]>``, or ValueError when the
    checkpoint found there is of another run (a 16-hex-digit prefix collision)."""
    if not checkpoint_dir:
        return None
    ckpt = load_checkpoint(fingerprint_dir(checkpoint_dir, fingerprint))
    if ckpt is not None and ckpt["fingerprint"] != fingerprint:
        raise ValueError(f"checkpoint_dir {checkpoint_dir!r} holds a checkpoint of a different run "
                         "(data, config or seed differ); use an empty checkpoint_dir for a new run")
    return ckpt


def find_checkpoint(checkpoint_dir: str | None, fingerprint: str, earlier: Sequence[str] = ()
                    ) -> tuple[dict | None, str]:
    """(newest checkpoint of this fingerprint, a note saying where it came from or why none).

    Looks in ``checkpoint_dir`` (this task's earlier attempts), then in each of ``earlier`` (the
    origin run's checkpoint roots, on ``resume``). When the earlier roots hold checkpoints of other
    fingerprints only, the note says the run starts fresh because data, config or seed changed.
    """
    ckpt = load_matching_checkpoint(checkpoint_dir, fingerprint)
    if ckpt is not None:
        return ckpt, f"resumed at optimizer step {ckpt['step']} from this task's checkpoint"
    others: list[str] = []
    for root in earlier:
        ckpt = load_matching_checkpoint(root, fingerprint)
        if ckpt is not None:
            return ckpt, f"resumed at optimizer step {ckpt['step']} from the origin run's checkpoint ({root})"
        if Path(root).is_dir():
            others += [p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")]
    if others:
        return None, (f"the origin run's checkpoints were made from other data, config or seed "
                      f"(fingerprints {sorted(others)[:3]}, this run {fingerprint[:16]}): starting fresh")
    return None, ""


def restore_checkpoint(ckpt: dict, model, opt, sched, sharded: bool = False, wrapper=None) -> None:
    """Put a checkpoint's trainable parameters, optimizer, scheduler and RNG states back (into a
    sharded model: :func:`sso.training.sharding.restore_state`; under DeepSpeed, ``wrapper`` its
    engine: :func:`sso.training.zero.restore_zero`; on every rank)."""
    from sso.training.zero import is_zero, restore_zero

    if is_zero(wrapper):
        restore_zero(wrapper, ckpt["trainable"], ckpt["optimizer"])
    elif sharded:
        from sso.training.sharding import restore_state

        restore_state(model, opt, ckpt["trainable"], ckpt["optimizer"])
    else:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in ckpt["trainable"].items():
                params[name].copy_(value.to(params[name].device))
        opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])

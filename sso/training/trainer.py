"""LoRA preference training: plain DPO/IPO (policy) and the SSO generator loss.

Both trainers share one loop; they differ only in an :class:`Objective`: which (prompt, response)
columns form the sequences of an example and how their log-probs become a loss (:mod:`sso.training.losses`).

How a run goes:

1. validate the table (ValueError naming the column and row);
2. load the base model, wrap it in a fresh LoRA adapter (``cfg.lora``) or in ``init_adapter``;
3. tokenise every sequence once, and score all of them ONCE under the reference (adapter disabled,
   or the starting ``init_adapter`` as it is before training), no grad: the reference log-probs
   and the on-policyness (mean per-token probability ``exp(a(y|x))``) come out of that pass and
   no reference forward runs during training;
4. the optimizer steps: per micro-batch, all sequences of the examples (chosen+rejected, or the
   four SSO sequences) are padded once and scored in ONE forward pass; AdamW, linear warmup +
   cosine decay, gradient accumulation, clipping, bf16 autocast on CUDA only;
5. every ``cfg.checkpoint_every`` steps an atomic checkpoint (adapter, optimizer, scheduler, RNG,
   data position, history) is written to ``checkpoint_dir``; a new call with the same
   ``checkpoint_dir`` resumes from it and produces the same subsequent losses;
6. after training, the pair accuracies on the training data and the adapter bytes are returned.

The data order is a pure function of ``seed`` (one seeded permutation per epoch), so the data
position of a checkpoint is just the number of optimizer steps taken.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from sso.training.adapters import read_adapter, write_adapter
from sso.config import ModelConfig, TrainConfig
from sso.training.losses import PairLogps, base_pair_loss, pair_metrics, sso_loss
from sso.training.probe import compute_logits_probe
from sso.training.scoring import Encoded, _pad_id, collate, encode_pairs, sequence_logps

if TYPE_CHECKING:
    import pandas as pd

CHECKPOINT_PREFIX = "step-"

# ----------------------------------------------------------------------------------------------
# Objectives
# ----------------------------------------------------------------------------------------------

ObjectiveLoss = Callable[[Tensor, Tensor, Tensor, TrainConfig], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class Objective:
    """What one training example is made of and how its log-probs become a loss.

    ``columns``: required columns, each a non-empty string in every row.
    ``roles``: (name, prompt column, response column) of each sequence of an example, in the order
    the loss reads them. ``report_roles``: sequences scored once under the reference for the
    on-policyness report only. ``loss(policy [k, B], reference [k, B], n_tokens [k, B], cfg)``
    returns per-example losses ``[B]`` and detached per-example metrics.
    """

    name: str
    columns: tuple[str, ...]
    roles: tuple[tuple[str, str, str], ...]
    loss: ObjectiveLoss
    report_roles: tuple[tuple[str, str, str], ...] = ()
    optional_report_roles: tuple[tuple[str, str, str], ...] = ()


def _pair(pol: Tensor, ref: Tensor, ntok: Tensor, i: int) -> PairLogps:
    return PairLogps(pol[i], pol[i + 1], ref[i], ref[i + 1], ntok[i], ntok[i + 1])


def _dpo_objective_loss(pol: Tensor, ref: Tensor, ntok: Tensor, cfg: TrainConfig):
    losses, rc, rr = base_pair_loss(_pair(pol, ref, ntok, 0), base=cfg.loss, beta=cfg.beta,
                                    label_smoothing=cfg.label_smoothing)
    return losses, pair_metrics("", rc, rr)


def _sso_objective_loss(pol: Tensor, ref: Tensor, ntok: Tensor, cfg: TrainConfig):
    return sso_loss(_pair(pol, ref, ntok, 0), _pair(pol, ref, ntok, 2), base=cfg.loss, beta=cfg.beta,
                    gamma=cfg.gamma, lam=cfg.lam, label_smoothing=cfg.label_smoothing)


DPO_OBJECTIVE = Objective(
    name="dpo",
    columns=("prompt_text", "chosen", "rejected"),
    roles=(("chosen", "prompt_text", "chosen"), ("rejected", "prompt_text", "rejected")),
    loss=_dpo_objective_loss,
)

SSO_OBJECTIVE = Objective(
    name="sso",
    columns=("x_plus", "x_minus", "y_plus", "y_minus", "y_o"),
    roles=(("plus_chosen", "x_plus", "y_plus"), ("plus_rejected", "x_plus", "y_minus"),
           ("minus_chosen", "x_minus", "y_o"), ("minus_rejected", "x_minus", "y_plus")),
    loss=_sso_objective_loss,
    report_roles=(("y_minus_x_minus", "x_minus", "y_minus"),),
    optional_report_roles=(("y_plus_plain", "prompt_text", "y_plus"),
                           ("y_minus_plain", "prompt_text", "y_minus")),
)

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (DPO_OBJECTIVE, SSO_OBJECTIVE)}


@dataclass
class TrainResult:
    """Trained adapter (peft files as bytes), per-logged-step history, and run summary."""

    adapter: dict[str, bytes]
    history: "pd.DataFrame"
    summary: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def train_dpo(model_path: str, pairs, cfg: TrainConfig, model_cfg: ModelConfig, *, seed: int,
              checkpoint_dir: str | None = None, init_adapter: dict[str, bytes] | None = None,
              progress: bool = True, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """DPO (or IPO, ``cfg.loss``) with LoRA on ``pairs`` (columns prompt_text, chosen, rejected).

    ``prompt_text`` is the already-rendered chat prompt. The reference is the base model, or the
    starting ``init_adapter`` frozen when one is given. ``on_log`` is called with a copy of each
    history row as it is logged (live cards, external loggers).
    """
    return _train(DPO_OBJECTIVE, model_path, pairs, cfg, model_cfg, seed=seed,
                  checkpoint_dir=checkpoint_dir, init_adapter=init_adapter, progress=progress,
                  on_log=on_log)


def train_sso(model_path: str, triples, cfg: TrainConfig, model_cfg: ModelConfig, *, seed: int,
              checkpoint_dir: str | None = None, init_adapter: dict[str, bytes] | None = None,
              progress: bool = True, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """SSO generator training (``L+ + lam * L-``) with LoRA on ``triples``.

    Columns: x_plus, x_minus (rendered prompts with the good/bad principle as system message),
    y_plus, y_minus, y_o. An optional ``prompt_text`` column (the plain rendered prompt) adds the
    on-policyness of y+ and y- under the plain prompt to the summary. ``on_log``: as in
    :func:`train_dpo`.
    """
    return _train(SSO_OBJECTIVE, model_path, triples, cfg, model_cfg, seed=seed,
                  checkpoint_dir=checkpoint_dir, init_adapter=init_adapter, progress=progress,
                  on_log=on_log)


# ----------------------------------------------------------------------------------------------
# Validation and data
# ----------------------------------------------------------------------------------------------


def validate_table(table, objective: Objective, name: str) -> None:
    """Raise ValueError naming the column/row if ``table`` cannot feed ``objective``."""
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in objective.columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {', '.join(missing)}; "
                         f"expected {', '.join(objective.columns)}, got {', '.join(map(str, table.columns))}")
    if len(table) == 0:
        raise ValueError(f"{name} is empty: no rows to train on")
    for col in objective.columns:
        for pos, value in enumerate(table[col].tolist()):
            if not isinstance(value, str) or not value.strip():
                qid = f" (query_id {table['query_id'].iloc[pos]})" if "query_id" in table.columns else ""
                raise ValueError(f"{name} column {col!r} row {pos}{qid} is empty or not a string: {value!r}")


def _encode_roles(tokenizer, table, roles) -> list[list[Encoded]]:
    """Token ids of every (prompt, response) sequence, one list per role."""
    return [encode_pairs(tokenizer, table[p].tolist(), table[r].tolist()) for _name, p, r in roles]


def _report_roles(objective: Objective, table) -> tuple[tuple[str, str, str], ...]:
    extra = tuple(r for r in objective.optional_report_roles if r[1] in table.columns)
    return objective.report_roles + extra


def _fingerprint(objective: Objective, table, cfg: TrainConfig, seed: int,
                 init_adapter: dict[str, bytes] | None) -> str:
    """Identity of a run for checkpoint matching: objective, data, config, seed, starting adapter."""
    h = hashlib.sha256()
    h.update(json.dumps([objective.name, seed, repr(cfg)]).encode())
    for name in sorted(init_adapter or {}):
        h.update(name.encode() + b"\x00" + init_adapter[name])
    for col in objective.columns:
        for value in table[col].tolist():
            h.update(value.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def _load_policy(model_path: str, cfg: TrainConfig, model_cfg: ModelConfig, seed: int,
                 init_adapter: dict[str, bytes] | None):
    """Base model + tokenizer, wrapped in a fresh LoRA adapter or the given starting adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from sso.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_path, revision=model_cfg.revision,
                               trust_remote_code=model_cfg.trust_remote_code)
    base = load_model(model_path, dtype=model_cfg.dtype, device=model_cfg.device,
                      revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    base.config.use_cache = False
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(seed)   # LoRA A matrices are drawn from the global generator
    if init_adapter is not None:
        with tempfile.TemporaryDirectory(prefix="sso-init-adapter-") as tmp:
            model = PeftModel.from_pretrained(base, str(write_adapter(init_adapter, tmp)), is_trainable=True)
    else:
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(base, lora)
    return model, tokenizer


def _reference_context(model, has_init_adapter: bool):
    """The reference: adapter disabled (= base), or the starting adapter as loaded (not trained yet)."""
    import contextlib

    return contextlib.nullcontext() if has_init_adapter else model.disable_adapter()


def _autocast(device: torch.device):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _score_all(model, encoded: list[list[Encoded]], max_length: int, pad_id: int,
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
            with _autocast(_device(model)):
                s, c = sequence_logps(model, batch)
            logps[list(rows), list(cols)] = s.float().cpu()
            ntok[list(rows), list(cols)] = c.float().cpu()
            n_truncated += int(batch["truncated"].sum())
            bar.update(len(rows))
    finally:
        model.train(was_training)
        bar.close()
    return logps, ntok, n_truncated


def _onpolicyness(names: list[str], logps: Tensor, ntok: Tensor) -> dict[str, float]:
    """Mean per-token probability exp(a(y|x)) of each role, averaged over examples."""
    return {f"onpolicy_{name}": float(torch.exp(logps[i] / ntok[i].clamp(min=1)).mean())
            for i, name in enumerate(names)}


def _export_adapter(model) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="sso-adapter-") as tmp:
        model.save_pretrained(tmp)
        return read_adapter(tmp)


# ----------------------------------------------------------------------------------------------
# Schedule and optimizer
# ----------------------------------------------------------------------------------------------


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


def _make_optimizer(model, cfg: TrainConfig, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup))
    return opt, sched


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def _trainable_state(model) -> dict[str, Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(checkpoint_dir: str, state: dict, model) -> Path:
    """Atomically write ``step-NNNNNNNN/`` (state.pt + peft adapter) and drop older ones."""
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    torch.save(state, tmp / "state.pt")
    model.save_pretrained(tmp / "adapter")
    target = root / f"{CHECKPOINT_PREFIX}{state['step']:08d}"
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    for old in root.glob(f"{CHECKPOINT_PREFIX}*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(checkpoint_dir: str | None) -> dict | None:
    """The newest complete checkpoint's state under ``checkpoint_dir``, or None."""
    if not checkpoint_dir or not Path(checkpoint_dir).is_dir():
        return None
    done = sorted(p for p in Path(checkpoint_dir).glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.pt").is_file())
    if not done:
        return None
    return torch.load(done[-1] / "state.pt", map_location="cpu", weights_only=True)


def _restore(ckpt: dict, model, opt, sched) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in ckpt["trainable"].items():
            params[name].copy_(value.to(params[name].device))
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    _set_rng_state(ckpt["rng"])


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything a training step needs (built once per call)."""

    model: object
    objective: Objective
    cfg: TrainConfig
    encoded: list[list[Encoded]]
    ref_logps: Tensor      # [k, N]
    max_length: int
    pad_id: int

    def micro_batch(self, idx: list[int]) -> dict[str, Tensor]:
        """All k sequences of the given rows, role-major, padded once."""
        return collate([role[i] for role in self.encoded for i in idx], self.max_length, self.pad_id)

    def forward_loss(self, idx: list[int]) -> tuple[Tensor, dict[str, Tensor], int]:
        """Per-example losses ``[B]``, metrics and token count of rows ``idx`` (one forward)."""
        batch = self.micro_batch(idx)
        k, b = len(self.encoded), len(idx)
        with _autocast(_device(self.model)):
            logps, ntok = sequence_logps(self.model, batch)                  # [k*B]
        pol, ntok = logps.float().view(k, b), ntok.view(k, b)
        ref = self.ref_logps[:, idx].to(pol.device)
        losses, metrics = self.objective.loss(pol, ref, ntok, self.cfg)
        return losses, metrics, int(batch["attention_mask"].sum())


def optimizer_step(run: _Run, opt, sched, micro_batches: list[list[int]]) -> dict[str, float]:
    """One optimizer step over its micro-batches (grad accumulation); returns its mean metrics."""
    n = sum(len(mb) for mb in micro_batches)
    sums: dict[str, Tensor] = {}
    tokens = 0
    for idx in micro_batches:
        losses, metrics, ntok = run.forward_loss(idx)
        (losses.sum() / n).backward()
        for key, value in {"loss": losses.detach(), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value.float().sum()
        tokens += ntok
    params = [p for p in run.model.parameters() if p.requires_grad]
    clip = run.cfg.max_grad_norm if run.cfg.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    lr = sched.get_last_lr()[0]
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    values = torch.stack([*sums.values(), grad_norm.float().to(next(iter(sums.values())).device)]).tolist()  # 1 sync
    return {**{k: v / n for k, v in zip(sums, values)}, "grad_norm": values[-1], "learning_rate": lr,
            "tokens": tokens}


@torch.no_grad()
def _final_metrics(run: _Run, batch_size: int) -> dict[str, float]:
    """Pair accuracies and margins on the whole training table, after training (eval mode)."""
    logps, ntok, _ = _score_all(run.model, run.encoded, run.max_length, run.pad_id, 2 * batch_size)
    _, metrics = run.objective.loss(logps, run.ref_logps, ntok, run.cfg)
    return {k: float(v.float().mean()) for k, v in metrics.items() if k.endswith(("accuracy", "margin"))}


def _history_row(step: int, steps_per_epoch: int, rec: dict[str, float], tok_s: float) -> dict:
    row = {"step": step, "epoch": step / steps_per_epoch, "loss": rec["loss"],
           "learning_rate": rec["learning_rate"], "tokens_per_s": tok_s}
    row.update({k: v for k, v in rec.items() if k not in row and k != "tokens"})
    return row


def _run_loop(run: _Run, opt, sched, schedule, state: dict, checkpoint_dir: str | None,
              progress: bool, on_log: Callable[[dict], None] | None = None) -> dict:
    """Take the remaining optimizer steps, logging and checkpointing; returns the final state."""
    from sso.progress import progress_bar

    cfg = run.cfg
    steps_per_epoch = math.ceil(math.ceil(len(run.encoded[0]) / cfg.batch_size) / cfg.grad_accum)
    run.model.train()
    bar = progress_bar(len(schedule), f"train {run.objective.name}", unit="step",
                       initial=state["step"], enabled=progress)
    t_log, tok_log = time.perf_counter(), 0
    for step in range(state["step"], len(schedule)):
        t0 = time.perf_counter()
        rec = optimizer_step(run, opt, sched, schedule[step][1])
        state["seconds"] += time.perf_counter() - t0
        state["tokens"] += rec["tokens"]
        state["examples_seen"] += sum(len(mb) for mb in schedule[step][1])
        state["step"] = step + 1
        tok_log += rec["tokens"]
        if state["step"] % cfg.log_every == 0 or state["step"] == len(schedule):
            now = time.perf_counter()
            state["history"].append(_history_row(state["step"], steps_per_epoch, rec,
                                                 tok_log / max(now - t_log, 1e-9)))
            t_log, tok_log = now, 0
            bar.set_postfix(loss=f"{rec['loss']:.4f}", refresh=False)
            if on_log is not None:
                on_log(dict(state["history"][-1]))
        if checkpoint_dir and cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0 \
                and state["step"] < len(schedule):
            _checkpoint(run, opt, sched, state, checkpoint_dir)
        bar.update(1)
    bar.close()
    return state


def _checkpoint(run: _Run, opt, sched, state: dict, checkpoint_dir: str) -> None:
    ckpt = {**state, "trainable": _trainable_state(run.model), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": _rng_state(), "ref_logps": run.ref_logps}
    save_checkpoint(checkpoint_dir, ckpt, run.model)


def _prepare(objective: Objective, model_path, table, cfg, model_cfg, seed, init_adapter,
             ckpt: dict | None = None, progress: bool = False):
    """Load the model, tokenise, and precompute reference log-probs (+ on-policyness).

    When resuming, the reference log-probs and the report come from the checkpoint instead.
    """
    model, tokenizer = _load_policy(model_path, cfg, model_cfg, seed, init_adapter)
    k, pad_id = len(objective.roles), _pad_id(tokenizer)
    if ckpt is not None:
        encoded = _encode_roles(tokenizer, table, objective.roles)
        run = _Run(model, objective, cfg, encoded, ckpt["ref_logps"], model_cfg.max_length, pad_id)
        return run, {**ckpt["info"], "resumed_from_step": ckpt["step"]}
    report = _report_roles(objective, table)
    encoded = _encode_roles(tokenizer, table, objective.roles + report)
    t0 = time.perf_counter()
    with _reference_context(model, init_adapter is not None):
        ref_logps, ntok, n_truncated = _score_all(model, encoded, model_cfg.max_length, pad_id,
                                                  2 * cfg.batch_size,
                                                  f"reference {objective.name}" if progress else None)
    names = [r[0] for r in objective.roles + report]
    info = {**_onpolicyness(names, ref_logps, ntok), "reference_seconds": time.perf_counter() - t0,
            "truncated_sequences": n_truncated}
    run = _Run(model, objective, cfg, encoded[:k], ref_logps[:k], model_cfg.max_length, pad_id)
    return run, info


def _train(objective: Objective, model_path: str, table, cfg: TrainConfig, model_cfg: ModelConfig, *,
           seed: int, checkpoint_dir: str | None, init_adapter, progress: bool,
           on_log: Callable[[dict], None] | None = None) -> TrainResult:
    import pandas as pd

    validate_table(table, objective, "pairs" if objective.name == "dpo" else "triples")
    table = table.reset_index(drop=True)
    fingerprint = _fingerprint(objective, table, cfg, seed, init_adapter)
    ckpt = load_checkpoint(checkpoint_dir)
    if ckpt is not None and ckpt["fingerprint"] != fingerprint:
        raise ValueError(f"checkpoint_dir {checkpoint_dir!r} holds a checkpoint of a different run "
                         "(data, config or seed differ); use an empty checkpoint_dir for a new run")
    run, info = _prepare(objective, model_path, table, cfg, model_cfg, seed, init_adapter, ckpt,
                         progress=progress)
    schedule = build_schedule(len(table), cfg, seed)
    opt, sched = _make_optimizer(run.model, cfg, len(schedule))
    state = {"step": 0, "seconds": 0.0, "tokens": 0, "examples_seen": 0, "history": [],
             "fingerprint": fingerprint, "info": info}
    if ckpt is not None:
        _restore(ckpt, run.model, opt, sched)
        state = {k: ckpt[k] for k in state if k != "info"} | {"info": info}
    state = _run_loop(run, opt, sched, schedule, state, checkpoint_dir, progress, on_log)
    history = pd.DataFrame(state["history"])
    summary = {
        "objective": objective.name, "loss_type": cfg.loss,
        "final_loss": float(history["loss"].iloc[-1]) if len(history) else float("nan"),
        "steps": state["step"], "examples": len(table), "examples_seen": state["examples_seen"],
        "tokens": state["tokens"], "seconds": state["seconds"],
        "tokens_per_s": state["tokens"] / max(state["seconds"], 1e-9),
        "steps_per_s": state["step"] / max(state["seconds"], 1e-9),
        **info, **_final_metrics(run, cfg.batch_size),
        "logits_probe": compute_logits_probe(run.model),   # reload check for the exported adapter
    }
    return TrainResult(adapter=_export_adapter(run.model), history=history, summary=summary)

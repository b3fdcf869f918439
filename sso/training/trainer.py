"""LoRA preference training: plain DPO/IPO (policy) and the SSO generator loss.

Both trainers share one loop; they differ only in an :class:`~sso.training.objectives.Objective`:
which (prompt, response) columns form the sequences of an example and how their log-probs become a
loss (:mod:`sso.training.losses`).

How a run goes:

1. validate the table (ValueError naming the column and row; :mod:`sso.training.objectives`);
2. tokenise every sequence once: a response whose ``<response>_finished`` column is False (cut at
   ``max_new_tokens``) gets no end-of-turn token; prompts are never cut, so an example whose
   prompt leaves too little of ``max_length`` for a response is dropped (all its roles), counted
   and listed in the summary (:func:`sso.training.reference.fit_examples`);
3. load the base model, wrap it in a fresh LoRA adapter (``cfg.lora``) or in ``init_adapter``
   (:mod:`sso.training.policy`; under ``fsdp`` / ``zero3`` on 2+ ranks rank 0 alone loads it and
   every rank fills its shards: :mod:`sso.training.sharded_load`), and score every kept sequence ONCE under the reference (adapter
   disabled, or the starting ``init_adapter`` as it is before training), no grad: the reference log-probs
   and the on-policyness (mean per-token probability ``exp(a(y|x))``) come out of that pass and
   no reference forward runs during training (:mod:`sso.training.reference`);
4. the optimizer steps: per micro-batch, all sequences of the examples (chosen+rejected, or the
   four SSO sequences) are padded once and scored in ONE forward pass; AdamW, linear warmup +
   cosine decay (:mod:`sso.training.schedule`), gradient accumulation, clipping, bf16 autocast on
   CUDA only;
5. every ``cfg.checkpoint_every`` steps an atomic checkpoint (adapter, optimizer, scheduler, RNG,
   data position, history) is written to ``checkpoint_dir``; a new call with the same
   ``checkpoint_dir`` resumes from it and produces the same subsequent losses
   (:mod:`sso.training.checkpoints`);
6. after training, the pair accuracies on the training data and the adapter bytes are returned.

The data order is a pure function of ``seed`` (one seeded permutation per epoch), so the data
position of a checkpoint is just the number of optimizer steps taken.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import Tensor

from sso.config import ModelConfig, TrainConfig
from sso.training.checkpoints import find_checkpoint, restore_checkpoint, run_fingerprint, save_training_checkpoint
from sso.training.distributed import (DistInfo, accumulate_gradients, all_reduce_sum, check_strategy, dist_info,
                                      same_on_all_ranks, score_reference, wrap_for_training)
from sso.training.memory import (RestartWithSplit, log_memory_estimate, release_cached_memory, retry_split,
                                 split_micro_batches)
from sso.training.objectives import DPO_OBJECTIVE, ONLINE_OBJECTIVE, SSO_OBJECTIVE, Objective, report_roles, validate_table
from sso.training.policy import (autocast, export_adapter, load_policy_model, load_policy_tokenizer, model_device,
                                 reference_context)
from sso.training.probe import compute_logits_probe
from sso.training.reference import compute_onpolicyness, count_capped, encode_roles, fit_examples
from sso.training.schedule import build_schedule, lr_factor, steps_per_epoch
from sso.training.sharded_load import load_for_training, loads_sharded, on_cpu
from sso.training.sharding import clip_and_step, gather_state, is_sharded, materialize
from sso.training.zero import is_zero
from sso.training.scoring import Encoded, collate, pad_token_id, sequence_logps

log = logging.getLogger("sso.training")

if TYPE_CHECKING:
    import pandas as pd

OnLog = Callable[[dict], None]


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
              progress: bool = True, on_log: OnLog | None = None,
              resume_dirs: Sequence[str] = (), micro_split: int = 1) -> TrainResult:
    """DPO (or IPO, ``cfg.loss``) with LoRA on ``pairs`` (columns prompt_text, chosen, rejected).

    ``prompt_text`` is the already-rendered chat prompt. Optional boolean columns
    ``chosen_finished`` / ``rejected_finished``: False for a response cut at ``max_new_tokens``. The reference is the base model, or the
    starting ``init_adapter`` frozen when one is given. ``on_log`` is called with a copy of each
    history row as it is logged (live cards, external loggers). ``checkpoint_dir``: where
    checkpoints are written and first looked for; ``resume_dirs``: earlier runs' checkpoint roots
    also searched (the origin run of a ``resume``; :func:`sso.training.checkpoints.find_checkpoint`).
    ``micro_split``: every micro-batch runs in this many pieces from the start (a torchrun job
    restarted after running out of memory: :func:`sso.training.launch.torchrun_job`).
    """
    return _train(DPO_OBJECTIVE, model_path, pairs, cfg, model_cfg, seed=seed,
                  checkpoint_dir=checkpoint_dir, init_adapter=init_adapter, progress=progress,
                  on_log=on_log, resume_dirs=resume_dirs, micro_split=micro_split)


def train_sso(model_path: str, triples, cfg: TrainConfig, model_cfg: ModelConfig, *, seed: int,
              checkpoint_dir: str | None = None, init_adapter: dict[str, bytes] | None = None,
              progress: bool = True, on_log: OnLog | None = None,
              resume_dirs: Sequence[str] = (), micro_split: int = 1) -> TrainResult:
    """SSO generator training (``L+ + lam * L-``) with LoRA on ``triples``.

    Columns: x_plus, x_minus (rendered prompts with the good/bad principle), y_plus, y_minus, y_o;
    optional boolean ``y_plus_finished``, ``y_minus_finished``, ``y_o_finished`` (False: the
    response was cut at ``max_new_tokens``). An optional ``prompt_text`` column (the plain rendered prompt) adds the
    on-policyness of y+ and y- under the plain prompt to the summary. ``on_log``: as in
    :func:`train_dpo`.
    """
    return _train(SSO_OBJECTIVE, model_path, triples, cfg, model_cfg, seed=seed,
                  checkpoint_dir=checkpoint_dir, init_adapter=init_adapter, progress=progress,
                  on_log=on_log, resume_dirs=resume_dirs, micro_split=micro_split)


def train_online(model_path: str, triples, cfg: TrainConfig, model_cfg: ModelConfig, *, seed: int,
                 checkpoint_dir: str | None = None, init_adapter: dict[str, bytes] | None = None,
                 progress: bool = True, on_log: OnLog | None = None,
                 resume_dirs: Sequence[str] = (), micro_split: int = 1) -> TrainResult:
    """The online SSO loss ``W * (L_main + theta * G)`` on the POLICY (``cfg.online`` options).

    Columns: prompt_text (plain rendered prompt), x_plus, x_minus, y_plus, y_minus, y_o, optional
    ``*_finished`` flags as in :func:`train_sso`. ``init_adapter``: the policy of the previous
    iteration, trained further and frozen as it is as this iteration's reference.
    """
    return _train(ONLINE_OBJECTIVE, model_path, triples, cfg, model_cfg, seed=seed,
                  checkpoint_dir=checkpoint_dir, init_adapter=init_adapter, progress=progress,
                  on_log=on_log, resume_dirs=resume_dirs, micro_split=micro_split)


# ----------------------------------------------------------------------------------------------
# One optimizer step
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainRun:
    """Everything a training step needs (built once per call)."""

    model: object
    objective: Objective
    cfg: TrainConfig
    encoded: list[list[Encoded]]
    ref_logps: Tensor      # [k, N]
    max_length: int
    pad_id: int
    dist: DistInfo = field(default_factory=DistInfo)   # this rank (rank 0 of 1 without torchrun)
    ddp: object = None     # the distributed scorer of ``model`` (DDP, FSDP2 root, DeepSpeed engine)
    schedule: list = field(default_factory=list)   # the optimizer steps' micro-batches
    opt: object = None     # AdamW over the trainable parameters
    sched: object = None   # its warmup + cosine schedule
    micro_split: int = 1   # each scheduled micro-batch runs in this many pieces (doubled on OOM)

    def micro_batch(self, idx: list[int]) -> dict[str, Tensor]:
        """All k sequences of the given rows, role-major, padded once."""
        return collate([role[i] for role in self.encoded for i in idx], self.max_length, self.pad_id)

    def forward_loss(self, idx: list[int]) -> tuple[Tensor, dict[str, Tensor], int]:
        """Per-example losses ``[B]``, metrics and token count of rows ``idx`` (one forward)."""
        batch = self.micro_batch(idx)
        k, b = len(self.encoded), len(idx)
        with autocast(model_device(self.model)):
            logps, ntok = self.ddp(batch) if self.ddp is not None else sequence_logps(self.model, batch)  # [k*B]
        pol, ntok = logps.float().view(k, b), ntok.view(k, b)
        ref = self.ref_logps[:, idx].to(pol.device)
        losses, metrics = self.objective.loss(pol, ref, ntok, self.cfg)
        return losses, metrics, int(batch["attention_mask"].sum())


def make_optimizer(model, cfg: TrainConfig, total_steps: int):
    """AdamW over the trainable parameters and its warmup + cosine LambdaLR over ``total_steps``."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup))
    return opt, sched


def optimizer_step(run: TrainRun, opt, sched, micro_batches: list[list[int]]) -> dict[str, float]:
    """One optimizer step over its micro-batches (grad accumulation); returns its mean metrics.

    Distributed: each rank runs its slice of every micro-batch and the metric sums are all-reduced
    (:func:`sso.training.distributed.accumulate_gradients`). Out of GPU memory (one process): the
    step restarts with every micro-batch halved, twice the accumulation, and so on for the rest of
    the run (:func:`sso.training.memory.retry_split`); the step's loss and gradient stay the same.
    Distributed, :class:`~sso.training.memory.RestartWithSplit` ends the job for a restart.
    """
    n = sum(len(mb) for mb in micro_batches)
    while True:
        parts = split_micro_batches(micro_batches, run.micro_split)
        try:
            sums, tokens = accumulate_gradients(run, parts, n)
            break
        except torch.OutOfMemoryError as exc:
            opt.zero_grad(set_to_none=True)
            split = retry_split(parts, run.micro_split, run.dist)
            if split is None:
                raise
            if run.dist.active:     # the ranks cannot agree mid-step: torchrun_job restarts the job
                raise RestartWithSplit(split) from exc
        run.micro_split = split     # out of the except block: the failed pass's tensors are gone
        release_cached_memory()
    dev = next(iter(sums.values())).device
    if run.dist.active:
        reduced = all_reduce_sum(torch.stack([*sums.values(), torch.tensor(float(tokens), device=dev)]))
        sums, tokens = dict(zip(sums, reduced[:-1])), int(round(float(reduced[-1])))
    lr = sched.get_last_lr()[0]
    grad_norm = clip_and_step(run.model, run.ddp, opt, run.cfg.max_grad_norm)
    sched.step()
    values = torch.stack([*sums.values(), grad_norm.float().to(dev)]).tolist()  # 1 sync
    return {**{k: v / n for k, v in zip(sums, values)}, "grad_norm": values[-1], "learning_rate": lr,
            "tokens": tokens}


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _history_row(step: int, per_epoch: int, rec: dict[str, float], tok_s: float) -> dict:
    """One history row: step, fractional epoch, loss, learning rate, tokens/s and the step's metrics."""
    row = {"step": step, "epoch": step / per_epoch, "loss": rec["loss"],
           "learning_rate": rec["learning_rate"], "tokens_per_s": tok_s}
    row.update({k: v for k, v in rec.items() if k not in row and k != "tokens"})
    return row


def _count_step(state: dict, rec: dict[str, float], micro_batches: list[list[int]], seconds: float) -> None:
    """Advance the loop state by one optimizer step that took ``seconds``."""
    state["seconds"] += seconds
    state["tokens"] += rec["tokens"]
    state["examples_seen"] += sum(len(mb) for mb in micro_batches)
    state["step"] += 1


def _checkpoint(run: TrainRun, checkpoint_dir: str, state: dict) -> None:
    """Rank 0 writes the checkpoint (a sharded model's state gathered by every rank first)."""
    gathered = gather_state(run.model, run.opt, run.ddp) if is_sharded(run.ddp) or is_zero(run.ddp) else None
    if run.dist.is_main:
        save_training_checkpoint(checkpoint_dir, state, run.model, run.opt, run.sched, run.ref_logps, gathered)


def _run_loop(run: TrainRun, state: dict, checkpoint_dir: str | None, progress: bool,
              on_log: OnLog | None = None) -> dict:
    """Take the remaining optimizer steps, logging and checkpointing (rank 0 only, when
    distributed); returns the final state."""
    from sso.progress import progress_bar

    cfg, schedule, total = run.cfg, run.schedule, len(run.schedule)
    per_epoch = steps_per_epoch(len(run.encoded[0]), cfg)
    run.model.train()
    bar = progress_bar(total, f"train {run.objective.name}", unit="step", initial=state["step"],
                       enabled=progress and run.dist.is_main)
    t_log, tok_log = time.perf_counter(), 0
    for step in range(state["step"], total):
        t0 = time.perf_counter()
        rec = optimizer_step(run, run.opt, run.sched, schedule[step][1])
        _count_step(state, rec, schedule[step][1], time.perf_counter() - t0)
        tok_log += rec["tokens"]
        if state["step"] % cfg.log_every == 0 or state["step"] == total:
            now = time.perf_counter()
            state["history"].append(_history_row(state["step"], per_epoch, rec,
                                                 tok_log / max(now - t_log, 1e-9)))
            t_log, tok_log = now, 0
            bar.set_postfix(loss=f"{rec['loss']:.4f}", refresh=False)
            if on_log is not None:
                on_log(dict(state["history"][-1]))
        if checkpoint_dir and cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0 \
                and state["step"] < total:
            _checkpoint(run, checkpoint_dir, state)
        bar.update(1)
    bar.close()
    return state


# ----------------------------------------------------------------------------------------------
# Preparing a run, and what it returns
# ----------------------------------------------------------------------------------------------


def encode_table(tokenizer, objective: Objective, table, max_length: int) -> tuple[list[list[Encoded]], dict]:
    """Token ids of the kept rows, one list per role (training roles first, then report roles), and
    the data report (drops, capped responses). Prompts are never cut: see :func:`fit_examples`."""
    roles = objective.roles + report_roles(objective, table)
    encoded = encode_roles(tokenizer, table, roles)
    keep, info = fit_examples(encoded, table, max_length)
    encoded = [[role[i] for i in keep] for role in encoded]
    return encoded, {**info, "n_capped_responses": count_capped(table, objective.roles, keep)}


def prepare_run(objective: Objective, model_path, table, cfg, model_cfg, seed, init_adapter,
                ckpt: dict | None = None, progress: bool = False, strategy: str = "ddp"):
    """Tokenise (dropping examples whose prompt does not fit), load the model (sharded for
    ``fsdp`` / ``zero3`` on 2+ ranks: :mod:`sso.training.sharded_load`), log the memory estimate,
    build the schedule, the distributed scorer, AdamW and its schedule (``run.schedule``,
    ``run.ddp``, ``run.opt``, ``run.sched``), and precompute the reference log-probs
    (+ on-policyness) of the kept rows, shared out over the ranks when distributed. The reference
    is the model before any step: LoRA with the adapter disabled (or the starting adapter), a fully
    fine-tuned model as loaded.

    The data is checked before the model is loaded. When resuming, the reference log-probs and the
    report come from the checkpoint instead.
    """
    tokenizer = load_policy_tokenizer(model_path, model_cfg)
    encoded, data_info = encode_table(tokenizer, objective, table, model_cfg.max_length)
    model, root = load_for_training(model_path, cfg, model_cfg, seed, init_adapter, strategy)
    k, pad_id = len(objective.roles), pad_token_id(tokenizer)
    run = TrainRun(model, objective, cfg, encoded[:k], None, model_cfg.max_length, pad_id, dist=dist_info())
    memory = log_memory_estimate(model, cfg, model_cfg, run.dist.world_size, k)
    run.schedule = build_schedule(len(encoded[0]), cfg, seed)
    run.ddp, run.opt, run.sched = wrap_for_training(model, run.dist, lambda: make_optimizer(model, cfg, len(run.schedule)),
                                                    strategy, model_cfg.dtype, cfg.max_grad_norm, root=root)
    if ckpt is not None:
        run.ref_logps = ckpt["ref_logps"]
        return run, {**ckpt["info"], **memory, "resumed_from_step": ckpt["step"]}
    names = [r[0] for r in objective.roles + report_roles(objective, table)]
    t0 = time.perf_counter()
    sharded = loads_sharded(strategy, run.dist.world_size)     # score through the sharded scorer
    with reference_context(model, init_adapter is not None):   # a no-op for full fine-tuning
        ref_logps, ntok, n_truncated = score_reference(model, encoded, model_cfg.max_length, pad_id,
                                                       2 * cfg.batch_size,
                                                       f"reference {objective.name}" if progress else None,
                                                       scorer=run.ddp if sharded else None)
    run.ref_logps = ref_logps[:k]
    return run, {**data_info, **memory, **compute_onpolicyness(names, ref_logps, ntok),
                 "reference_seconds": time.perf_counter() - t0, "truncated_sequences": n_truncated}


@torch.no_grad()
def _final_metrics(run: TrainRun, scorer=None) -> dict[str, float]:
    """Pair accuracies and margins on the whole training table, after training (eval mode), each
    rank scoring its share (through ``scorer``, the sharded one, under fsdp / zero3)."""
    logps, ntok, _ = score_reference(run.model, run.encoded, run.max_length, run.pad_id, 2 * run.cfg.batch_size,
                                     scorer=scorer)
    _, metrics = run.objective.loss(logps, run.ref_logps, ntok, run.cfg)
    return {k: float(v.float().mean()) for k, v in metrics.items() if k.endswith(("accuracy", "margin"))}


def _summary(run: TrainRun, state: dict, history, n_examples: int, info: dict, final: dict) -> dict:
    """The run summary: counts (``examples`` = rows trained on, after drops), throughput, data and
    reference report (``n_dropped_prompt_too_long``, ``dropped_prompt_too_long_query_ids``,
    ``n_capped_responses``, on-policyness, ``truncated_sequences``), final metrics, logits probe."""
    cfg = run.cfg
    return {
        "objective": run.objective.name, "loss_type": cfg.loss,
        "final_loss": float(history["loss"].iloc[-1]) if len(history) else float("nan"),
        "steps": state["step"], "examples": n_examples, "examples_seen": state["examples_seen"],
        "tokens": state["tokens"], "seconds": state["seconds"],
        "tokens_per_s": state["tokens"] / max(state["seconds"], 1e-9),
        "steps_per_s": state["step"] / max(state["seconds"], 1e-9),
        **info, **final,
        "logits_probe": compute_logits_probe(run.model),   # reload check for the exported adapter
    }


def _train(objective: Objective, model_path: str, table, cfg: TrainConfig, model_cfg: ModelConfig, *,
           seed: int, checkpoint_dir: str | None, init_adapter, progress: bool,
           on_log: OnLog | None = None, resume_dirs: Sequence[str] = (), micro_split: int = 1) -> TrainResult:
    import pandas as pd

    validate_table(table, objective, "pairs" if objective.name == "dpo" else "triples")
    strategy = getattr(cfg, "strategy", "ddp")
    check_strategy(strategy)
    sharded = loads_sharded(strategy, dist_info().world_size)     # no rank holds whole weights
    table = table.reset_index(drop=True)
    fingerprint = run_fingerprint(objective, table, cfg, model_cfg, seed, init_adapter)
    ckpt, note = find_checkpoint(checkpoint_dir, fingerprint, resume_dirs)
    same_on_all_ranks(ckpt["step"] if ckpt else -1, "the checkpoint step found (is checkpoint_dir shared?)")
    if note:
        log.info("train %s: %s", objective.name, note)
    run, info = prepare_run(objective, model_path, table, cfg, model_cfg, seed, init_adapter, ckpt,
                            progress=progress, strategy=strategy)
    info = {**info, "checkpoint_note": note} if note else info
    run.micro_split = micro_split
    n_examples = len(run.encoded[0])   # after dropping prompts that do not fit
    state = {"step": 0, "seconds": 0.0, "tokens": 0, "examples_seen": 0, "history": [],
             "fingerprint": fingerprint, "info": info}
    if ckpt is not None:
        restore_checkpoint(ckpt, run.model, run.opt, run.sched, is_sharded(run.ddp), run.ddp)
        state = {k: ckpt[k] for k in state if k != "info"} | {"info": info}
    start = state["step"]
    state = _run_loop(run, state, checkpoint_dir, progress, on_log)
    history = pd.DataFrame(state["history"])
    info = {**info, "steps_run": state["step"] - start, "micro_split": run.micro_split}   # steps by this call
    run.opt = run.sched = None          # AdamW's moments go before the final scoring and the export
    release_cached_memory()
    final = _final_metrics(run, run.ddp if sharded else None)     # every rank scores its share
    if sharded:   # rank 0: an unsharded copy in CPU memory for the logits probe and the export
        run.model, run.ddp = materialize(run.model, lambda: load_policy_model(
            model_path, cfg, on_cpu(model_cfg), seed, init_adapter), run.ddp), None
    if not run.dist.is_main:   # the same history on every rank; rank 0 alone exports
        return TrainResult(adapter={}, history=history, summary={"rank": run.dist.rank, "exported": False})
    info = {**info, "world_size": run.dist.world_size, "strategy": strategy if run.dist.active else "one process"}
    summary = _summary(run, state, history, n_examples, info, final)
    return TrainResult(adapter=export_adapter(run.model), history=history, summary=summary)

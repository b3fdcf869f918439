"""Data-parallel training under ``torchrun``: process group, rank slices, gradient and metric sums.

When ``torch.distributed`` is initialised (``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``; :func:`init_distributed` starts the group: gloo on CPU, nccl on CUDA), the trainer
(:mod:`sso.training.trainer`):

- builds the same seeded schedule on every rank; each rank takes its contiguous slice of every
  micro-batch (:func:`rank_slice`) and scales its loss by ``world_size / n`` so that the gradient
  DistributedDataParallel averages equals the single-process gradient of the whole step
  (:func:`accumulate_gradients`; gradients are all-reduced once per optimizer step, the other
  micro-batches run under ``no_sync``);
- scores the reference once, each rank a share of the sequences, summed over ranks
  (:func:`score_reference`);
- all-reduces the step's metric sums (:func:`all_reduce_sum`), so the history is identical on every
  rank; only rank 0 writes checkpoints, builds the summary and exports the model.

Strategies (``[policy] strategy``): ``ddp`` (every rank holds the whole model), ``fsdp``
(PyTorch FSDP2, :mod:`sso.training.sharding`: weights, gradients and optimizer state sharded over
the ranks, as ZeRO-3 does) and ``zero2`` / ``zero3`` (DeepSpeed ZeRO, :mod:`sso.training.zero`:
optimizer state and gradients, and for stage 3 the weights, sharded); all on CPU/gloo and
CUDA/nccl (see docs/scale.md).
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from sso.training.scoring import sequence_logps

STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank and world size of the initialised process group, else a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Start the process group from torchrun's environment (``WORLD_SIZE`` > 1); a no-op for a
    single process or when already started. Backend: nccl when CUDA is available, else gloo. On
    CUDA each process uses GPU ``LOCAL_RANK``."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return dist_info()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist_info()


def teardown() -> None:
    """Destroy the process group if one was started."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Tensor) -> Tensor:
    """``values`` summed over all ranks (returned on ``values``' device); unchanged in a single process."""
    import torch.distributed as dist

    if not dist_info().active:
        return values
    buf = values.detach().to(_comm_device(), dtype=torch.float64 if values.is_floating_point() else values.dtype)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(values.device, dtype=values.dtype)


def all_reduce_metrics(metrics: dict[str, float], mean: bool = False) -> dict[str, float]:
    """A dict of numbers summed (or averaged, ``mean``) over all ranks, in one collective."""
    if not metrics:
        return {}
    total = all_reduce_sum(torch.tensor([float(v) for v in metrics.values()], dtype=torch.float64))
    if mean:
        total = total / dist_info().world_size
    return dict(zip(metrics, total.tolist()))


def same_on_all_ranks(value: int, what: str) -> None:
    """RuntimeError on every rank, naming ``what``, unless all ranks hold the same integer ``value``."""
    import torch.distributed as dist

    if not dist_info().active:
        return
    buf = torch.tensor([value, -value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)                  # [max, -min]
    if buf[0] != -buf[1]:
        raise RuntimeError(f"ranks disagree on {what}: from {-int(buf[1])} to {int(buf[0])}")


def rank_slice(idx: Sequence[int], info: DistInfo) -> list[int]:
    """This rank's contiguous share of a micro-batch's rows (sizes differ by at most one; may be empty)."""
    n, w, r = len(idx), info.world_size, info.rank
    return list(idx[r * n // w: (r + 1) * n // w])


def check_strategy(strategy: str) -> None:
    """Before any model loads: ValueError for an unknown strategy; for the DeepSpeed ones, that
    DeepSpeed is installed (:func:`sso.training.zero.check_zero`)."""
    from sso.training.zero import check_zero

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    check_zero(strategy)


class LogpsModule(torch.nn.Module):
    """``sequence_logps(policy, batch)`` as a module, so that DistributedDataParallel's forward
    runs the trainer's own scoring (decoder + chunked LM head) and syncs the gradients it makes."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return sequence_logps(self.policy, batch)


def wrap_for_training(model, info: DistInfo, make_optimizer, strategy: str = "ddp", model_dtype: str = "float32",
                      max_grad_norm: float = 0.0, root=None):
    """(the distributed scorer of ``model``, its optimizer, its scheduler): the scorer is a
    :class:`LogpsModule` under DistributedDataParallel, the FSDP2-sharded root for ``fsdp``
    (:mod:`sso.training.sharding`) or the DeepSpeed engine for ``zero2`` / ``zero3``
    (:mod:`sso.training.zero`), None in one process. ``make_optimizer()`` builds (AdamW,
    scheduler) over the model's trainable parameters: after sharding for FSDP2 (it replaces the
    parameters), before the engine for DeepSpeed (which takes the optimizer over). ``root``: the
    FSDP2 root of a model already sharded as it was loaded (:mod:`sso.training.sharded_load`)."""
    if not info.active:
        return (None, *make_optimizer())
    if strategy == "fsdp":
        from sso.training.sharding import mixed_precision, shard_model

        if root is None:
            root = shard_model(model, mixed_precision(model_dtype, next(model.parameters()).device))
        return (root, *make_optimizer())
    if strategy in ("zero2", "zero3"):
        from sso.training.zero import zero_engine

        opt, sched = make_optimizer()
        return zero_engine(model, opt, strategy, model_dtype, max_grad_norm), opt, sched
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return (DistributedDataParallel(LogpsModule(model), device_ids=ids, gradient_as_bucket_view=True),
            *make_optimizer())


def accumulate_gradients(run, micro_batches: list[list[int]], n_rows: int) -> tuple[dict[str, Tensor], int]:
    """Forward + backward of this rank's slice of every micro-batch (``run``: a ``TrainRun``).

    Each rank's loss is ``sum(losses) * world_size / n_rows``, so DDP's averaged gradient is the
    gradient of ``sum over all rows / n_rows``, as in one process. A rank whose slice is empty
    runs one row with weight 0 (DDP needs every rank in each gradient all-reduce). Returns this
    rank's (unreduced) metric sums and token count.
    """
    from sso.training.sharding import backward, grad_sync

    info, ddp = run.dist, run.ddp
    sums: dict[str, Tensor] = {}
    tokens = 0
    for i, idx in enumerate(micro_batches):
        local = rank_slice(idx, info)
        with grad_sync(ddp, i == len(micro_batches) - 1):
            losses, metrics, ntok = run.forward_loss(local or list(idx[:1]))
            backward(ddp, (losses.sum() * info.world_size / n_rows) if local else losses.sum() * 0.0)
        keep = 1.0 if local else 0.0
        for key, value in {"loss": losses.detach(), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value.float().sum() * keep
        tokens += ntok if local else 0
    return sums, tokens


def score_reference(model, encoded, max_length: int, pad_id: int, seqs_per_batch: int,
                    progress_desc: str | None = None, scorer=None) -> tuple[Tensor, Tensor, int]:
    """:func:`sso.training.reference.score_all`, each rank scoring every ``world_size``-th batch
    of the length-sorted sequences (the batches one process scores) and the results summed over
    ranks (every rank gets the full ``[k, N]`` tensors). ``scorer``: a sharded scorer of ``model``
    (FSDP2 root, ZeRO-3 engine); every rank then runs the same number of forwards."""
    from sso.training.reference import length_sorted_batches, score_all

    info = dist_info()
    if not info.active:
        return score_all(model, encoded, max_length, pad_id, seqs_per_batch, progress_desc, scorer=scorer)
    batches = length_sorted_batches(encoded, seqs_per_batch)
    mine = batches[info.rank::info.world_size]
    extra = -(-len(batches) // info.world_size) - len(mine) if scorer is not None and batches else 0
    logps, ntok, n_truncated = score_all(model, encoded, max_length, pad_id, seqs_per_batch,
                                         progress_desc if info.is_main else None,
                                         batches=mine + batches[:1] * extra, discard=extra, scorer=scorer)
    packed = all_reduce_sum(torch.cat([logps.flatten(), ntok.flatten(), torch.tensor([float(n_truncated)])]))
    k, n = len(encoded), len(encoded[0])
    return packed[: k * n].view(k, n), packed[k * n: 2 * k * n].view(k, n), int(packed[-1])


def torchrun_command(nproc: int, args: Sequence[str] = (), *, module: str = "sso.training.launch",
                     nnodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
                     master_port: int = 29500, python: str | None = None) -> list[str]:
    """The argv of ``torchrun`` (as ``python -m torch.distributed.run``) running ``python -m module
    args`` on ``nproc`` processes per node; ``nnodes`` > 1 adds the static rendezvous of node
    ``node_rank`` at ``master_addr:master_port`` (what Metaflow's @parallel provides)."""
    if nproc < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ValueError(f"need nproc >= 1, nnodes >= 1 and 0 <= node_rank < nnodes, got "
                         f"{nproc}, {nnodes}, {node_rank}")
    cmd = [python or sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}",
           f"--master_port={master_port}"]
    return cmd + ["-m", module, *args]

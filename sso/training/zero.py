"""``strategy = "zero2" | "zero3"``: DeepSpeed ZeRO for the trainer (``pip install 'sso-flow[deepspeed]'``).

ZeRO-2 shards AdamW's state and the gradients over the ranks (every rank keeps the whole model);
ZeRO-3 shards the parameters too, gathering a layer's weights only while it runs. The engine wraps
the same root scorer as DDP and FSDP (:class:`sso.training.distributed.LogpsModule`: decoder and
chunked LM head; under ZeRO-3 DeepSpeed gathers the head's weight when the chunked log-probs read
it inside that forward) and the trainer's own AdamW and warmup + cosine schedule, so the loss, the
data order and the step arithmetic are those of the other strategies. What changes in the loop
(:mod:`sso.training.trainer`):

- backward goes through ``engine.backward`` (ZeRO's gradient partitioning), unscaled: DeepSpeed's
  own accumulation count stays 1 and the trainer marks the last micro-batch of each optimizer
  step as the accumulation boundary (:func:`sso.training.sharding.grad_sync`), as it switches off
  DDP's all-reduce and FSDP's reduce-scatter for the others;
- ``engine.step()`` clips (``gradient_clipping`` = ``max_grad_norm``) and steps AdamW; the step's
  gradient norm is DeepSpeed's (before clipping, as ``clip_grad_norm_`` returns it);
- precision: float32 master weights and moments in DeepSpeed's optimizer; on CUDA with
  ``[model] dtype = "bfloat16"`` the model computes in bf16 (``bf16.enabled``); on CPU (gloo: the
  tests) everything is float32;
- loading (:mod:`sso.training.sharded_load`): under ZeRO-3 on 2+ ranks the model is built under
  ``zero.Init`` (:func:`zero_init`) and filled from rank 0, so no rank holds it whole;
- after the last step the final metrics are scored on every rank (under ZeRO-3 through the
  engine), and rank 0 needs whole weights for the logits probe and the export: under ZeRO-2 its
  module already holds them; under ZeRO-3 every parameter is gathered once (:func:`gather_zero3`,
  a collective) into an unsharded copy in CPU memory (:func:`sso.training.sharding.materialize`).

Training checkpoints (``checkpoint_every``): every rank's ZeRO optimizer state (its partition of
the float32 master weights and AdamW moments, DeepSpeed's own ``state_dict()``) is gathered to
rank 0, which writes them into the one checkpoint file with the trainable weights (whole: rank 0's
module under ZeRO-2; under ZeRO-3 the float32 partitions are the weights). A resumed run loads
rank r's partition on rank r (:func:`restore_zero`), so it needs the same number of ranks.

On CPU, DeepSpeed would JIT-compile a shared-memory all-reduce kernel (C++, about a minute on two
cores, and a compiler on the machine) the first time it starts; :func:`zero_engine` keeps plain
gloo collectives there instead (the kernel only speeds up CPU all-reduce).
"""

from __future__ import annotations

import torch

STAGES = {"zero2": 2, "zero3": 3}


def is_zero(wrapper) -> bool:
    """Whether ``wrapper`` (the trainer's distributed scorer) is a DeepSpeed engine."""
    return type(wrapper).__name__ == "DeepSpeedEngine" or hasattr(wrapper, "zero_optimization_stage")


def check_zero(strategy: str) -> None:
    """Before any model loads: DeepSpeed is installed for the ZeRO strategies."""
    if strategy not in STAGES:
        return
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"strategy {strategy!r} needs DeepSpeed: pip install 'sso-flow[deepspeed]' "
                          f"(or strategy = 'fsdp', PyTorch FSDP2, which needs nothing more)") from exc


def deepspeed_config(stage: int, device: torch.device, model_dtype: str, max_grad_norm: float) -> dict:
    """The engine's config: ZeRO ``stage``, the trainer's own accumulation and AdamW (a client
    optimizer), clipping, bf16/fp16 compute on CUDA only."""
    conf = {
        "train_micro_batch_size_per_gpu": 1,        # train_batch_size: 1 x 1 x world, derived
        "gradient_accumulation_steps": 1,          # the trainer accumulates and marks the boundary
        "gradient_clipping": float(max_grad_norm) if max_grad_norm > 0 else 0.0,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,     # torch.optim.AdamW, the trainer's
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2 ** 31, "wall_clock_breakdown": False,
    }
    if device.type == "cuda" and model_dtype == "bfloat16":
        conf["bf16"] = {"enabled": True}
    elif device.type == "cuda" and model_dtype == "float16":
        conf["fp16"] = {"enabled": True}           # dynamic loss scaling: DeepSpeed skips overflowed steps
    return conf


def _plain_gloo_on_cpu(device: torch.device) -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory CPU all-reduce kernel (see the module
    docstring): it then uses the gloo process group as it is."""
    if device.type == "cpu":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def zero_engine(model, opt, strategy: str, model_dtype: str, max_grad_norm: float):
    """The DeepSpeed engine over ``LogpsModule(model)`` and the trainer's AdamW ``opt`` (the
    process group is torchrun's, already initialised)."""
    import logging

    import deepspeed

    from sso.training.distributed import LogpsModule

    device = next(model.parameters()).device
    _plain_gloo_on_cpu(device)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    conf = deepspeed_config(STAGES[strategy], device, model_dtype, max_grad_norm)
    engine, _, _, _ = deepspeed.initialize(model=LogpsModule(model), optimizer=opt, config=conf,
                                           dist_init_required=False)
    return engine


def zero_init(device: torch.device, model_dtype: str):
    """``deepspeed.zero.Init`` for this run's ZeRO-3 engine: modules made inside it have their
    parameters partitioned over the ranks as they are created, in the engine's dtype (bf16/fp16 on
    CUDA as ``model_dtype`` asks, else float32; DeepSpeed 0.19 ignores an explicit ``dtype`` on
    machines without fp16)."""
    import deepspeed

    _plain_gloo_on_cpu(device)
    conf = deepspeed_config(3, device, model_dtype, 0.0)
    return deepspeed.zero.Init(config_dict_or_path=conf)


def zero_step(engine) -> torch.Tensor:
    """Clip and step (at the boundary the last backward marked); the gradient norm before clipping."""
    engine.step()
    norm = engine.get_global_grad_norm()
    return norm.detach().float().cpu() if torch.is_tensor(norm) else torch.tensor(float(norm or 0.0))


def gather_zero3(engine) -> dict[str, torch.Tensor]:
    """Every parameter of the ZeRO-3 ``engine``'s model, whole, on rank 0 (CPU), named as in the
    unwrapped model; {} on the other ranks. A collective: one gather per parameter, so no rank
    ever holds more than one whole parameter beyond its shards."""
    import deepspeed
    import torch.distributed as dist

    full, main = {}, dist.get_rank() == 0
    for name, param in engine.module.policy.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if main:
                full[name] = param.detach().to("cpu", copy=True)
    return full


def gather_zero_state(engine) -> tuple[dict[str, torch.Tensor], dict]:
    """(trainable weights, {"zero_partitions": every rank's serialised ZeRO optimizer state}) on
    rank 0, ({}, {}) on the others. A collective: every rank must call it."""
    import io

    import torch.distributed as dist

    buf = io.BytesIO()
    torch.save(engine.optimizer.state_dict(), buf)
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(buf.getvalue(), parts, dst=0)
    if dist.get_rank() != 0:
        return {}, {}
    model = engine.module.policy
    weights = {} if engine.zero_optimization_stage() == 3 else {     # ZeRO-3: the partitions hold them
        n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    return weights, {"zero_partitions": parts}


def restore_zero(engine, trainable: dict[str, torch.Tensor], optim: dict) -> None:
    """Load what :func:`gather_zero_state` saved, on every rank: the weights into the module
    (ZeRO-2), this rank's partition into DeepSpeed's optimizer (master weights, moments, and
    under ZeRO-3 the weights)."""
    import io

    import torch.distributed as dist

    parts = optim["zero_partitions"]
    if len(parts) != dist.get_world_size():
        raise ValueError(f"this checkpoint was written by {len(parts)} ranks; a ZeRO run resumes only on the "
                         f"same number (now {dist.get_world_size()})")
    params = dict(engine.module.policy.named_parameters())
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value.to(params[name].device))
    # DeepSpeed's own state dicts (loss scaler objects, version strings): written by rank 0 of this run
    states = [torch.load(io.BytesIO(p), map_location="cpu", weights_only=False) for p in parts]
    engine.optimizer.load_state_dict(states, load_optimizer_states=True, load_from_fp32_weights=True)

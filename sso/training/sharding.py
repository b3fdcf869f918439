"""``strategy = "fsdp"``: PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``) for the trainer.

Every rank holds 1/world of each parameter, its gradient and its AdamW moments (as ZeRO-3 does);
a decoder layer's full weights exist only while that layer runs (all-gathered on the way in,
gradients reduce-scattered on the way out). Sharded units: each decoder layer (the classes in the
model's ``_no_split_modules``), then the root :class:`sso.training.distributed.LogpsModule`
(embeddings, final norm, LM head), whose forward is the trainer's own scoring, so the chunked
log-probs and every loss are unchanged.

Precision: the weights are loaded and kept in float32 (the master copy, sharded) and, on CUDA with
``[model] dtype = "bfloat16"``, computed in bf16 with float32 gradient reduction
(``MixedPrecisionPolicy``): 5e-7 updates of full fine-tuning do not round away as they do on bf16
weights under ``ddp``. On CPU (gloo; what the tests run) everything is float32.

What changes around the loop (:mod:`sso.training.trainer`):

- gradient accumulation: the gradient reduce-scatter is switched off for all but the last
  micro-batch of an optimizer step (:func:`grad_sync`), as ``no_sync`` does for DDP;
- the gradient norm is a DTensor: :func:`full_norm` makes it a plain tensor;
- checkpoints: :func:`gather_state` (a collective: every rank calls it) gives rank 0 the full
  trainable parameters and the optimizer state keyed by parameter name; rank 0 writes them, and a
  resumed run loads the same file on every rank (:func:`restore_state`);
- after the last step every rank scores its share of the final metrics through the sharded root,
  then :func:`materialize` gathers the full weights into an unsharded copy in rank 0's CPU
  memory, which gives the logits probe and the export (the other ranks return).
"""

from __future__ import annotations

import contextlib

import torch


def _layer_classes(model) -> set[str]:
    """Class names of the decoder layers (transformers' ``_no_split_modules`` of the base model)."""
    from sso.training.policy import is_peft_model, unwrap

    base = unwrap(model).get_base_model() if is_peft_model(model) else unwrap(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    if not names:
        raise ValueError(f"strategy 'fsdp' needs the model's decoder-layer classes (_no_split_modules); "
                         f"{type(base).__name__} has none: use strategy = 'ddp'")
    return names


def mixed_precision(model_dtype: str, device: torch.device):
    """bf16/fp16 compute with float32 reduction on CUDA, None (float32 throughout) elsewhere."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    if device.type != "cuda" or model_dtype not in dtypes:
        return None
    return MixedPrecisionPolicy(param_dtype=dtypes[model_dtype], reduce_dtype=torch.float32)


def shard_model(model, mp_policy=None):
    """Shard ``model`` in place (each decoder layer, then the root scorer); returns the root
    :class:`~sso.training.distributed.LogpsModule`, the module the trainer calls."""
    from torch.distributed.fsdp import fully_shard

    from sso.training.distributed import LogpsModule

    kw = {"mp_policy": mp_policy} if mp_policy is not None else {}
    classes = _layer_classes(model)
    layers = [m for m in model.modules() if type(m).__name__ in classes]
    for layer in layers:
        fully_shard(layer, **kw)
    root = LogpsModule(model)
    fully_shard(root, **kw)
    return root


def is_sharded(wrapper) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(wrapper, FSDPModule)


def grad_sync(wrapper, sync: bool):
    """The context of one micro-batch's backward: DDP's ``no_sync`` unless ``sync``; for FSDP2 the
    reduce-scatter is switched off or on; for DeepSpeed the micro-batch is marked as the
    accumulation boundary or not; nothing when not distributed."""
    from sso.training.zero import is_zero

    if is_zero(wrapper):
        wrapper.set_gradient_accumulation_boundary(sync)
    elif is_sharded(wrapper):
        wrapper.set_requires_gradient_sync(sync)
    elif wrapper is not None and not sync:
        return wrapper.no_sync()
    return contextlib.nullcontext()


def backward(wrapper, loss) -> None:
    """``loss.backward()``; under DeepSpeed through the engine (ZeRO's hooks), not divided by
    DeepSpeed's accumulation count (the trainer scales the loss itself)."""
    from sso.training.zero import is_zero

    if is_zero(wrapper):
        wrapper.backward(loss, scale_wrt_gas=False)
    else:
        loss.backward()


def clip_and_step(model, wrapper, opt, max_grad_norm: float):
    """Clip the gradients to ``max_grad_norm`` (0: no clipping), step AdamW and zero the
    gradients; returns the gradient norm before clipping. Under DeepSpeed the engine does all
    three (:func:`sso.training.zero.zero_step`)."""
    from sso.training.zero import is_zero, zero_step

    if is_zero(wrapper):
        return zero_step(wrapper)
    params = [p for p in model.parameters() if p.requires_grad]
    norm = full_norm(torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf")))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return norm


def full_norm(norm):
    """The gradient norm as a plain tensor (a DTensor under FSDP2)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gather_state(model, opt, wrapper=None) -> tuple[dict, dict]:
    """(full trainable parameters, full optimizer state by parameter name) on rank 0, ({}, {}) on
    the others; under DeepSpeed (``wrapper`` its engine) every rank's ZeRO partition instead
    (:func:`sso.training.zero.gather_zero_state`). A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from sso.training.zero import gather_zero_state, is_zero

    if is_zero(wrapper):
        return gather_zero_state(wrapper)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    weights, optim = get_state_dict(model, opt, options=_options(cpu_offload=True))
    return {n: t for n, t in weights.items() if n in trainable}, optim


def restore_state(model, opt, trainable: dict, optim: dict) -> None:
    """Load what :func:`gather_state` saved into the sharded ``model`` and ``opt`` (every rank,
    from the same checkpoint file)."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, opt, model_state_dict=trainable, optim_state_dict=optim,
                   options=_options(strict=False))


def materialize(model, build, wrapper=None):
    """An unsharded copy of the sharded ``model`` (FSDP2, or the model of the ZeRO-3 engine
    ``wrapper``) on rank 0 (``build()`` makes the empty copy: the same architecture, loaded as at
    the start); None on the other ranks. A collective."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from sso.training.zero import gather_zero3, is_zero

    if is_zero(wrapper):
        full = gather_zero3(wrapper)
    else:
        full = get_model_state_dict(model, options=_options(cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    plain = build()
    device = next(plain.parameters()).device
    missing, unexpected = plain.load_state_dict({k: v.to(device) for k, v in full.items()}, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"gathered weights do not fit the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    return plain

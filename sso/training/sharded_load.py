"""Sharded loading for ``strategy = "fsdp" | "zero3"`` on more than one rank: one whole copy of
the weights (rank 0's, in CPU memory), never one per rank.

Loading the whole model on every rank and sharding it afterwards puts, for an 8B model in float32,
32 GB on every GPU (above the training estimate) and one copy per rank in the host's memory
(256 GB on an 8-GPU node). Instead (:func:`load_for_training`):

1. rank 0 loads the model to train into CPU memory, as one process would
   (:func:`sso.training.policy.load_policy_model`: base, fresh or starting LoRA adapter, merges);
2. every rank builds the same architecture without reading any weight (:func:`skeleton`): on the
   meta device for FSDP2, under ``deepspeed.zero.Init`` for ZeRO-3 (each parameter partitioned as
   it is made); FSDP2 shards the meta model (:func:`sso.training.sharding.shard_model`) and gives
   each rank's shards empty storage (``to_empty``);
3. the weights go from rank 0 into every rank's shards one tensor at a time: FSDP2's
   ``set_model_state_dict(..., broadcast_from_rank0=True)``; ZeRO-3 one
   ``GatheredParameters(modifier_rank=0)`` per parameter (LoRA parameters, made outside
   ``zero.Init``, are broadcast and partitioned by the engine). Buffers (the rotary frequencies,
   not in the state dict) are broadcast, and a tied LM head is tied again after ``to_empty``
   (which gives every parameter its own storage).

The reference log-probs are then scored through the sharded scorer
(:func:`sso.training.distributed.score_reference` with ``scorer``), as are the final metrics
after training; rank 0 then gathers an unsharded copy into CPU memory for the logits probe and
the export (:func:`sso.training.sharding.materialize`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile

import torch

from sso.config import ModelConfig, TrainConfig

SHARDED_STRATEGIES = ("fsdp", "zero3")


def loads_sharded(strategy: str, world_size: int) -> bool:
    """Whether :func:`load_for_training` loads sharded: ``fsdp`` / ``zero3`` on 2+ ranks."""
    return strategy in SHARDED_STRATEGIES and world_size > 1


def on_cpu(model_cfg: ModelConfig, dtype: torch.dtype | None = None) -> ModelConfig:
    """``model_cfg`` loading into CPU memory, in ``dtype`` or in the dtype it has on its own device
    (``"auto"`` resolved there: bf16 on a GPU, not the CPU's float32)."""
    from sso.models.loading import pick_device, pick_dtype

    dtype = dtype or pick_dtype(model_cfg.dtype, pick_device(model_cfg.device))
    return dataclasses.replace(model_cfg, device="cpu", dtype=str(dtype).removeprefix("torch."))


def skeleton(model_path: str, cfg: TrainConfig, model_cfg: ModelConfig, init_adapter, dtype: torch.dtype,
             base_context=contextlib.nullcontext):
    """The architecture :func:`sso.training.policy.load_policy_model` returns, weights not read:
    the base model made from its config inside ``base_context()`` (the meta device, or
    ``zero.Init``), then the same LoRA wrapping (the starting adapter's own config) or, for full
    fine-tuning, every parameter trainable (a merged LoRA start has the base's architecture)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from sso.training.adapters import write_adapter
    from sso.training.policy import is_full_model, prepare_base, write_model_files

    full = getattr(cfg, "finetuning", "lora") == "full"
    with tempfile.TemporaryDirectory(prefix="sso-skeleton-") as tmp:
        path, revision = model_path, model_cfg.revision
        if full and init_adapter is not None and is_full_model(init_adapter):
            path, revision = str(write_model_files(init_adapter, tmp)), ""
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code,
                                            **({"revision": revision} if revision else {}))
        with base_context(), no_init_weights():     # every weight is overwritten from rank 0
            base = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code)
        if getattr(config, "tie_word_embeddings", False):
            base.tie_weights()                      # not done under no_init_weights
        base = prepare_base(base, cfg)
        if full:
            for p in base.parameters():
                p.requires_grad_(True)
            return base
        if init_adapter is None:
            lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                              target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
        else:
            lora = LoraConfig.from_pretrained(str(write_adapter(init_adapter, tmp)))
            lora.inference_mode = False
        return get_peft_model(base, lora)


def _base_of(model):
    from sso.training.policy import is_peft_model

    return model.get_base_model() if is_peft_model(model) else model


def broadcast_buffers(model, source) -> None:
    """Every buffer of ``model`` replaced by rank 0's ``source`` one (None on the other ranks), in
    the source's dtype: ``zero.Init`` casts buffers to the compute dtype, but the rotary frequencies
    stay float32 in a model loaded as one process loads it."""
    import torch.distributed as dist

    dtypes = [{n: b.dtype for n, b in source.named_buffers()} if source is not None else None]
    dist.broadcast_object_list(dtypes, src=0)
    src = dict(source.named_buffers()) if source is not None else {}
    for name, buf in list(model.named_buffers()):
        value = (src[name].to(buf.device, copy=True) if dist.get_rank() == 0
                 else torch.empty(buf.shape, dtype=dtypes[0][name], device=buf.device))
        dist.broadcast(value, src=0)
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._buffers[attr] = value


def _load_fsdp(model, source, device, mp_policy):
    """Shard the meta ``model``, give it storage on ``device``, fill it from rank 0's ``source``."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from sso.training.sharding import shard_model

    root = shard_model(model, mp_policy)
    model.to_empty(device=device)
    if getattr(_base_of(model).config, "tie_word_embeddings", False):
        _base_of(model).tie_weights()
    full = source.state_dict() if dist.get_rank() == 0 else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return root


def _load_zero3(model, source) -> None:
    """Fill the ZeRO-3-partitioned ``model`` from rank 0's ``source``: one gather per partitioned
    parameter (rank 0 writes, DeepSpeed re-partitions), a broadcast for the others."""
    import deepspeed
    import torch.distributed as dist

    main = dist.get_rank() == 0
    src = source.state_dict() if main else {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if hasattr(p, "ds_id"):
                with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                    if main:
                        p.copy_(src[name])
            else:
                if main:
                    p.copy_(src[name])
                dist.broadcast(p.data, src=0)


def load_for_training(model_path: str, cfg: TrainConfig, model_cfg: ModelConfig, seed: int, init_adapter,
                      strategy: str):
    """(model, FSDP2 root or None): the model to train as :func:`sso.training.policy.load_policy_model`
    loads it, or, for ``fsdp`` / ``zero3`` on 2+ ranks, loaded sharded (module docstring); under
    ``fsdp`` the returned root is the sharded scorer (``wrap_for_training(..., root=...)``)."""
    import torch.distributed as dist

    from sso.models.loading import pick_device, pick_dtype
    from sso.training.distributed import dist_info
    from sso.training.policy import load_policy_model

    if not loads_sharded(strategy, dist_info().world_size):
        return load_policy_model(model_path, cfg, model_cfg, seed, init_adapter), None
    device = pick_device(model_cfg.device)
    dtype = pick_dtype("float32" if strategy == "fsdp" else model_cfg.dtype, device)   # FSDP2: float32 masters
    main = dist.get_rank() == 0
    source = load_policy_model(model_path, cfg, on_cpu(model_cfg, dtype), seed, init_adapter) if main else None
    if strategy == "fsdp":
        from sso.training.sharding import mixed_precision

        with torch.device("meta"):                # LoRA layers too
            model = skeleton(model_path, cfg, model_cfg, init_adapter, dtype)
        root = _load_fsdp(model, source, device, mixed_precision(model_cfg.dtype, device))
    else:
        from sso.training.zero import zero_init

        model = skeleton(model_path, cfg, model_cfg, init_adapter, dtype, lambda: zero_init(device, model_cfg.dtype))
        _load_zero3(model, source)
        root = None
    broadcast_buffers(model, source)
    del source
    return model, root

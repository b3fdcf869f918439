"""GPU memory of a training run, estimated before it starts; and what to do when it runs out.

:func:`estimate_training_memory` adds up, per GPU and in bytes (approximations, stated here so a
test can check the arithmetic):

- ``weights``: every parameter at the model dtype (``dtype_bytes``; float32 under ``fsdp``, whose
  sharded master copy is float32 and computes in bf16, :mod:`sso.training.sharding`); LoRA adds
  its adapter weights in float32 (peft keeps adapters in float32). Sharded over the GPUs by
  zero3 / fsdp.
- ``grads``: one gradient per trainable parameter at its dtype. Sharded by zero2 / zero3 / fsdp.
- ``optimizer``: AdamW's two moments. ``ddp`` / ``fsdp`` (torch AdamW on the parameters as
  stored): ``2 x`` the trainable dtype; ``zero2`` / ``zero3`` (DeepSpeed): float32 moments plus a
  float32 master copy when the parameters are not float32 (12 bytes per bf16 parameter).
  Sharded as the gradients.
- ``activations``: what backward keeps for the micro-batch slice one GPU runs (``ceil(batch_size
  / n_gpus) x sequences_per_example`` sequences of ``max_length`` tokens, the padded worst
  case). Per token and decoder layer of a Llama-style block (sdpa attention, no ``T x T`` score
  matrix): the two RMSNorms in float32 (``16 H`` bytes) plus ``dtype_bytes x (6 H + 3 KV + 4 I)``
  (projection inputs, rotary q/k, attention q/k/v/out, the o_proj input, the four ``I``-wide MLP
  intermediates); plus ``8 H`` per token for the final norm. With gradient checkpointing: each
  layer's input (``dtype_bytes x H`` per token and layer) plus one layer recomputed in full.
- ``logits``: the chunked LM head of :mod:`sso.training.logprobs`: one float32 chunk of
  ``rows_per_chunk(V) x V``, a float32 copy of the head weight when it is not float32, its float32
  gradient buffer when the head trains (full fine-tuning), and the gathered hidden states
  ``[tokens, H]``.

Not counted: the CUDA context and allocator fragmentation (:func:`check_fits` keeps 10 % spare),
DDP's communication buckets (the trainer uses gradients as bucket views) and the transient
full-layer gather of zero3 / fsdp.

When a step runs out of memory anyway, the trainer halves its micro-batches and doubles the
accumulation (:func:`split_micro_batches`, :func:`retry_split`): the same rows make the same
gradient, in more passes. Under torchrun the job ends instead (:class:`RestartWithSplit`) and is
started again with the halved micro-batches, from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping

from sso.config import ModelConfig, TrainConfig
from sso.training.distributed import DistInfo
from sso.training.logprobs import rows_per_chunk

log = logging.getLogger("sso.training")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}   # auto: bf16 on a GPU
MEMORY_PARTS = ("weights", "grads", "optimizer", "activations", "logits")
#: (input features, output features) of each Llama projection, from the shape dict
_PROJ = {"q_proj": ("h", "q"), "k_proj": ("h", "kv"), "v_proj": ("h", "kv"), "o_proj": ("q", "h"),
         "gate_proj": ("h", "i"), "up_proj": ("h", "i"), "down_proj": ("i", "h")}
FIT_HEADROOM = 0.9


def model_shape(config_or_path: Any) -> dict[str, int]:
    """Hidden size ``h``, layers, vocab, intermediate ``i``, q width ``q``, kv width ``kv``, tied
    embeddings of a config dict, a transformers config, or a model directory / Hub id."""
    if isinstance(config_or_path, str):
        from transformers import AutoConfig

        config_or_path = AutoConfig.from_pretrained(config_or_path).to_dict()
    get = config_or_path.get if isinstance(config_or_path, Mapping) else (lambda k, d=None: getattr(config_or_path, k, d))
    h, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    head_dim = int(get("head_dim", None) or h // heads)
    return {"h": h, "layers": int(get("num_hidden_layers")), "vocab": int(get("vocab_size")),
            "i": int(get("intermediate_size")), "q": heads * head_dim,
            "kv": int(get("num_key_value_heads", None) or heads) * head_dim,
            "tied": bool(get("tie_word_embeddings", False))}


def count_parameters(shape: dict[str, int]) -> int:
    """Parameters of a Llama-style model: embeddings, layers (q, k, v, o, gate, up, down, 2 norms),
    final norm, and the LM head unless tied."""
    h, v = shape["h"], shape["vocab"]
    layer = sum(shape[a] * shape[b] for a, b in _PROJ.values()) + 2 * h
    return v * h + shape["layers"] * layer + h + (0 if shape["tied"] else v * h)


def lora_parameters(shape: dict[str, int], r: int, target_modules) -> int:
    """LoRA parameters: ``r x (in + out)`` per targeted projection per layer."""
    unknown = [m for m in target_modules if m not in _PROJ]
    if unknown:
        raise ValueError(f"cannot size LoRA target module(s) {unknown}; known: {sorted(_PROJ)}")
    return shape["layers"] * sum(r * (shape[_PROJ[m][0]] + shape[_PROJ[m][1]]) for m in target_modules)


def _activation_bytes(shape: dict[str, int], tokens: int, wb: int, checkpointing: bool) -> int:
    h = shape["h"]
    per_layer = 16 * h + wb * (6 * h + 3 * shape["kv"] + 4 * shape["i"])     # per token
    if checkpointing:
        return tokens * (shape["layers"] * wb * h + per_layer + 8 * h)
    return tokens * (shape["layers"] * per_layer + 8 * h)


def _logits_bytes(shape: dict[str, int], tokens: int, wb: int, full: bool) -> int:
    v, h = shape["vocab"], shape["h"]
    return (rows_per_chunk(v) * v * 4 + (v * h * 4 if wb != 4 else 0) + (v * h * 4 if full else 0)
            + tokens * h * wb)


def estimate_training_memory(model_config_or_path: Any, train_cfg: TrainConfig, model_cfg: ModelConfig,
                             n_gpus: int = 1, strategy: str | None = None,
                             sequences_per_example: int = 2) -> dict:
    """Per-GPU bytes of ``weights``, ``grads``, ``optimizer``, ``activations``, ``logits`` and their
    ``total`` (see the module docstring), with ``parameters``, ``trainable_parameters``,
    ``tokens_per_gpu``, ``n_gpus``, ``strategy`` and ``finetuning``."""
    shape = model_shape(model_config_or_path)
    strategy = strategy or train_cfg.strategy
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    wb, full = DTYPE_BYTES[model_cfg.dtype], train_cfg.finetuning == "full"
    params = count_parameters(shape)
    trainable = params if full else lora_parameters(shape, train_cfg.lora.r, train_cfg.lora.target_modules)
    stored = 4 if strategy == "fsdp" else wb     # fsdp keeps float32 master weights (sharded)
    tb = stored if full else 4
    shard_w = n_gpus if strategy in ("zero3", "fsdp") else 1
    shard_go = n_gpus if strategy in ("zero2", "zero3", "fsdp") else 1
    adam = (8 + (4 if tb != 4 else 0)) if strategy in ("zero2", "zero3") else 2 * tb
    tokens = math.ceil(train_cfg.batch_size / n_gpus) * sequences_per_example * model_cfg.max_length
    est = {
        "weights": (params * stored + (0 if full else trainable * tb)) // shard_w,
        "grads": trainable * tb // shard_go,
        "optimizer": trainable * adam // shard_go,
        "activations": _activation_bytes(shape, tokens, wb, train_cfg.gradient_checkpointing),
        "logits": _logits_bytes(shape, tokens, wb, full),
    }
    return {**est, "total": sum(est.values()), "parameters": params, "trainable_parameters": trainable,
            "tokens_per_gpu": tokens, "n_gpus": n_gpus, "strategy": strategy,
            "finetuning": "full" if full else "lora"}


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def format_memory_estimate(est: dict) -> str:
    """One line: the per-GPU parts and total of :func:`estimate_training_memory`."""
    parts = ", ".join(f"{k} {_gib(est[k])}" for k in MEMORY_PARTS)
    return (f"estimated memory per GPU ({est['finetuning']}, {est['strategy']} on {est['n_gpus']} GPU(s), "
            f"{est['tokens_per_gpu']} tokens per micro-batch): {parts}; total {_gib(est['total'])}")


def check_fits(est: dict, gpu_memory_gb: float, headroom: float = FIT_HEADROOM) -> str | None:
    """A warning when the estimate exceeds ``headroom`` of a GPU's ``gpu_memory_gb`` GiB, else None."""
    limit = headroom * gpu_memory_gb * 2**30
    if est["total"] <= limit:
        return None
    fixes = ["a smaller batch_size with a larger grad_accum (same effective batch)"]
    if est["activations"] > 0.3 * est["total"]:
        fixes.insert(0, "gradient_checkpointing = true")
    if est["finetuning"] == "full":
        fixes.append("strategy = 'zero3' over more GPUs, or finetuning = 'lora'")
    return (f"estimated {_gib(est['total'])} per GPU exceeds {headroom:.0%} of the GPU's {gpu_memory_gb:.1f} GiB "
            f"({format_memory_estimate(est)}); try " + "; or ".join(fixes))


def log_memory_estimate(model, cfg: TrainConfig, model_cfg: ModelConfig, n_gpus: int,
                        sequences_per_example: int) -> dict:
    """Log the estimate for ``model`` as loaded (its real dtype) and, on CUDA, whether it fits;
    returns ``{"memory_estimate_gib": ...}`` for the run summary ({} when the shape is unknown)."""
    import torch

    param = next(model.parameters())
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(param.dtype, "auto")
    try:
        est = estimate_training_memory(model.config, cfg, dataclasses.replace(model_cfg, dtype=dtype), n_gpus,
                                       sequences_per_example=sequences_per_example)
    except (TypeError, ValueError, KeyError) as exc:     # not a Llama-style config
        log.info("no memory estimate for this model: %s", exc)
        return {}
    print(format_memory_estimate(est), flush=True)    # before training, in the step's log
    if param.device.type == "cuda":
        warning = check_fits(est, torch.cuda.get_device_properties(param.device).total_memory / 2**30)
        if warning:
            log.warning("%s", warning)
    return {"memory_estimate_gib": est["total"] / 2**30}


def split_micro_batches(micro_batches: list[list[int]], split: int) -> list[list[int]]:
    """Each micro-batch cut into ``split`` consecutive pieces of ``ceil(len / split)`` rows (fewer
    when it runs short): the same rows in the same order, in more passes."""
    if split <= 1:
        return micro_batches
    out = []
    for mb in micro_batches:
        size = max(1, math.ceil(len(mb) / split))
        out += [mb[i: i + size] for i in range(0, len(mb), size)]
    return out


class RestartWithSplit(RuntimeError):
    """Out of memory under torchrun: the ranks cannot agree on a retry mid-step, so the job ends
    and :func:`sso.training.launch.torchrun_job` starts it again with every micro-batch in
    ``split`` pieces (from the last checkpoint when there is one)."""

    def __init__(self, split: int):
        super().__init__(f"out of memory: restart the job with micro-batches in {split} pieces")
        self.split = split


def retry_split(parts: list[list[int]], split: int, info: DistInfo) -> int | None:
    """After an out-of-memory error on micro-batches ``parts``: the doubled split to retry with
    (logged; distributed, the job is restarted with it), or None when there is nothing left to halve."""
    biggest = max(len(p) for p in parts)
    if math.ceil(biggest / info.world_size) <= 1:     # each rank already runs one row at a time
        log.error("out of memory at micro-batch %d (nothing left to halve): set gradient_checkpointing = true, "
                  "lower [model] max_length or shard with strategy = 'fsdp' / 'zero3'", biggest)
        return None
    log.warning("out of memory at micro-batch %d: retrying with %d x %d accumulation%s", biggest,
                math.ceil(biggest / 2), 2 * len(parts), " (the job restarts)" if info.active else "")
    return split * 2


def release_cached_memory() -> None:
    """Hand the CUDA caching allocator's free blocks back (after an out-of-memory error, after training); a no-op on CPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

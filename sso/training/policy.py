"""The model being trained: the base model wrapped in a LoRA adapter, its reference, its export.

The reference is the base model (adapter disabled) for a fresh adapter, or the starting adapter as
loaded, before any step, when training continues from one (:func:`reference_context`).
"""

from __future__ import annotations

import contextlib
import tempfile

import torch

from sso.config import ModelConfig, TrainConfig
from sso.training.adapters import read_adapter, write_adapter


def load_policy_tokenizer(model_path: str, model_cfg: ModelConfig):
    """The tokenizer of the model being trained (cheap: load it before the model to check the data)."""
    from sso.models.loading import load_tokenizer

    return load_tokenizer(model_path, revision=model_cfg.revision,
                          trust_remote_code=model_cfg.trust_remote_code)


def load_policy_model(model_path: str, cfg: TrainConfig, model_cfg: ModelConfig, seed: int,
                      init_adapter: dict[str, bytes] | None):
    """Base model wrapped in a fresh LoRA adapter (``cfg.lora``, seeded) or the given starting adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from sso.models.loading import load_model

    base = load_model(model_path, dtype=model_cfg.dtype, device=model_cfg.device,
                      revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    base.config.use_cache = False
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(seed)   # LoRA A matrices are drawn from the global generator
    if init_adapter is not None:
        with tempfile.TemporaryDirectory(prefix="sso-init-adapter-") as tmp:
            return PeftModel.from_pretrained(base, str(write_adapter(init_adapter, tmp)), is_trainable=True)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


def load_policy(model_path: str, cfg: TrainConfig, model_cfg: ModelConfig, seed: int,
                init_adapter: dict[str, bytes] | None):
    """(model, tokenizer): :func:`load_policy_model` and :func:`load_policy_tokenizer`."""
    tokenizer = load_policy_tokenizer(model_path, model_cfg)
    return load_policy_model(model_path, cfg, model_cfg, seed, init_adapter), tokenizer


def reference_context(model, has_init_adapter: bool):
    """The reference: adapter disabled (= base), or the starting adapter as loaded (not trained yet)."""
    return contextlib.nullcontext() if has_init_adapter else model.disable_adapter()


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context elsewhere."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def model_device(model) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


def export_adapter(model) -> dict[str, bytes]:
    """The model's peft adapter files as bytes (see :func:`sso.training.adapters.read_adapter`)."""
    with tempfile.TemporaryDirectory(prefix="sso-adapter-") as tmp:
        model.save_pretrained(tmp)
        return read_adapter(tmp)

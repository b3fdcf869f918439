"""The model being trained: LoRA on a frozen base, or every weight (full fine-tuning); its
reference; its export.

``cfg.finetuning``:

- ``"lora"``: the base model wrapped in a fresh LoRA adapter (``cfg.lora``), or in the starting
  adapter ``init_adapter``. The reference is the base model (adapter disabled) for a fresh
  adapter, or the starting adapter as loaded, before any step (:func:`reference_context`).
- ``"full"``: the base model itself, every parameter trainable (no peft). ``init_adapter`` may be
  full-model files (:func:`is_full_model`, what a full run exports) or a LoRA adapter (merged into
  the base before training). The reference is the same model before its first step: the trainer
  scores it before training, so :func:`reference_context` has nothing to switch off.

Export (:func:`export_adapter`) keeps one shape for both: ``dict[str, bytes]``. For LoRA it is the
peft adapter (``adapter_config.json``, ``adapter_model.safetensors``); for full fine-tuning the
files of ``save_pretrained`` (``config.json``, ``model.safetensors`` or its shards and index,
``generation_config.json``), which :func:`write_model_files` turns back into a directory that
``AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from sso.config import ModelConfig, TrainConfig
from sso.training.adapters import read_adapter, write_adapter

FINETUNING_MODES = ("lora", "full")


def load_policy_tokenizer(model_path: str, model_cfg: ModelConfig):
    """The tokenizer of the model being trained (cheap: load it before the model to check the data)."""
    from sso.models.loading import load_tokenizer

    return load_tokenizer(model_path, revision=model_cfg.revision,
                          trust_remote_code=model_cfg.trust_remote_code)


def _load_base(path: str, cfg: TrainConfig, model_cfg: ModelConfig, revision: str):
    from sso.models.loading import load_model

    return prepare_base(load_model(path, dtype=model_cfg.dtype, device=model_cfg.device, revision=revision,
                                   trust_remote_code=model_cfg.trust_remote_code), cfg)


def prepare_base(base, cfg: TrainConfig):
    """The base model set up for training: no KV cache, gradient checkpointing when asked."""
    base.config.use_cache = False
    if cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return base


def _load_full(model_path: str, cfg: TrainConfig, model_cfg: ModelConfig,
               init_adapter: dict[str, bytes] | None):
    """Every weight trainable: the base model, the given full-model files, or base + merged LoRA."""
    from peft import PeftModel

    with tempfile.TemporaryDirectory(prefix="sso-init-model-") as tmp:
        if init_adapter is not None and is_full_model(init_adapter):
            model = _load_base(str(write_model_files(init_adapter, tmp)), cfg, model_cfg, "")
        else:
            model = _load_base(model_path, cfg, model_cfg, model_cfg.revision)
            if init_adapter is not None:
                model = PeftModel.from_pretrained(model, str(write_adapter(init_adapter, tmp))).merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def load_policy_model(model_path: str, cfg: TrainConfig, model_cfg: ModelConfig, seed: int,
                      init_adapter: dict[str, bytes] | None):
    """The model to train (``cfg.finetuning``): base + fresh LoRA adapter (``cfg.lora``, seeded)
    or the starting adapter; or, for ``"full"``, the whole model (see the module docstring)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    mode = getattr(cfg, "finetuning", "lora")
    if mode not in FINETUNING_MODES:
        raise ValueError(f"finetuning must be one of {FINETUNING_MODES}, got {mode!r}")
    if mode == "full":
        return _load_full(model_path, cfg, model_cfg, init_adapter)
    if init_adapter is not None and is_full_model(init_adapter):
        raise ValueError("init_adapter holds a full model (finetuning = 'full' exported it); a LoRA run "
                         "needs a peft adapter: set finetuning = 'full' to continue from it")
    base = _load_base(model_path, cfg, model_cfg, model_cfg.revision)
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


def unwrap(model):
    """The model inside a DistributedDataParallel (or similar ``.module``) wrapper, else itself."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def is_peft_model(model) -> bool:
    """True for a peft-wrapped model (LoRA), False for a plain (fully fine-tuned) one."""
    from peft import PeftModel

    return isinstance(unwrap(model), PeftModel)


def reference_context(model, has_init_adapter: bool):
    """The reference: adapter disabled (= base), or the starting adapter as loaded (not trained
    yet); a no-op for a fully fine-tuned model (the reference is the model before its first step)."""
    if has_init_adapter or not is_peft_model(model):
        return contextlib.nullcontext()
    return unwrap(model).disable_adapter()


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context elsewhere."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def model_device(model) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


def is_full_model(files: dict[str, bytes]) -> bool:
    """True when exported files are a whole model (``config.json`` + safetensors), not a peft adapter."""
    return (isinstance(files, Mapping) and "config.json" in files and "adapter_config.json" not in files
            and any(name.endswith(".safetensors") for name in files))


def write_model_files(files: dict[str, bytes], directory: str | os.PathLike) -> Path:
    """Write full-model files (from :func:`export_adapter` of a full run) to ``directory``, which
    ``AutoModelForCausalLM.from_pretrained`` then loads; returns it."""
    if not is_full_model(files):
        raise ValueError("not full-model files: expected config.json and *.safetensors, "
                         f"got {sorted(files) if isinstance(files, Mapping) else type(files).__name__}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if os.path.basename(name) != name:
            raise ValueError(f"model file name must be a plain file name, got {name!r}")
        (d / name).write_bytes(data)
    return d


def export_model(model, directory: str | os.PathLike) -> Path:
    """Save the trained model to ``directory``: the peft adapter (LoRA) or the whole model
    (full fine-tuning, loadable by ``AutoModelForCausalLM.from_pretrained``)."""
    d = Path(directory)
    unwrap(model).save_pretrained(str(d))
    return d


def export_adapter(model) -> dict[str, bytes]:
    """The trained model's files as bytes: the peft adapter for LoRA (see
    :func:`sso.training.adapters.read_adapter`), every saved file for a full model."""
    with tempfile.TemporaryDirectory(prefix="sso-adapter-") as tmp:
        export_model(model, tmp)
        if is_peft_model(model):
            return read_adapter(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}

"""Resolving and loading models: one code path for ``sso-tiny``, local dirs and Hub ids.

Everything goes through ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` so the tiny
offline model exercises exactly the path a real model takes. Heavy imports happen inside functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sso.models.tiny import TINY_NAME, ensure_tiny_model


def resolve_model_path(name: str) -> str:
    """Map a config ``model.name`` to something ``from_pretrained`` accepts.

    ``sso-tiny`` and ``smollm2-135m-instruct`` are built (once, cached) offline; an existing
    directory is used as is; anything else is treated as a Hugging Face Hub id (resolved from the
    local HF cache when offline).
    """
    if not name or not name.strip():
        raise ValueError("model name is empty")
    if name == TINY_NAME:
        return str(ensure_tiny_model())
    from sso.models.smollm2 import SMOLLM2_NAME, ensure_smollm2_model

    if name == SMOLLM2_NAME:
        return str(ensure_smollm2_model())
    if os.path.isdir(name):
        return str(Path(name).resolve())
    if name.startswith((".", "/")):
        raise FileNotFoundError(f"model directory not found: {name}")
    return name


def pick_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device) -> Any:
    import torch

    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_tokenizer(path: str, *, revision: str = "", trust_remote_code: bool = False):
    """Load a tokenizer with left padding and a pad token (falls back to EOS)."""
    from transformers import AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if not getattr(tok, "chat_template", None):
        raise ValueError(
            f"model {path!r} has no chat template; SSO needs one to place principles in the "
            "system message (use an instruct/chat model)")
    return tok


def load_model(path: str, *, dtype: str = "float32", device: str = "auto", revision: str = "",
               trust_remote_code: bool = False, adapter: str | None = None):
    """Load a causal LM (optionally with a peft adapter dir) in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # "Loading weights" bars: noise in task logs

    dev = pick_device(device)
    kwargs = {"dtype": pick_dtype(dtype, dev), "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(dev)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model

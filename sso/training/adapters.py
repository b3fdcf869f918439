"""LoRA adapters as artifacts: a peft directory <-> a dict of file bytes.

Adapters are small (~100 KB for the tiny model, tens of MB for 8B LoRA), so they are stored as
Metaflow artifacts and travel with the run through the datastore. ``write_adapter`` turns one back
into a directory that ``PeftModel.from_pretrained`` loads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def read_adapter(directory: str | os.PathLike) -> dict[str, bytes]:
    """Read a peft adapter directory into {filename: bytes} (config + weights only)."""
    d = Path(directory)
    missing = [f for f in ADAPTER_FILES if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{d} is not a peft adapter directory: missing {', '.join(missing)}")
    return {f: (d / f).read_bytes() for f in ADAPTER_FILES}


def write_adapter(files: dict[str, bytes], directory: str | os.PathLike) -> Path:
    """Write adapter bytes (from ``read_adapter`` / an artifact) to ``directory`` and return it."""
    if not isinstance(files, Mapping) or any(f not in files for f in ADAPTER_FILES):
        raise ValueError(f"adapter artifact must be a dict with keys {ADAPTER_FILES}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d

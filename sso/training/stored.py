"""Model files kept in the flow's datastore, with a small reference as the artifact.

A fully fine-tuned model is every weight (16 GB for 8B in bf16). Pickled into a Metaflow artifact
it would be written as one pickle and read whole into memory by every task that merely carries
the artifact along (a join that merges all arms' policies, the ``end`` step). Instead the
training step writes each file once, raw and content-addressed, under
``<datastore root>/<Flow>/sso-models/<sha256[:2]>/<sha256>`` (the local ``.metaflow`` directory,
or S3), and the artifact is a :class:`StoredFiles`: ``{file name: sha256}`` plus where they
live. It is a read-only ``Mapping[str, bytes]`` that reads a file when asked for it, so the
samplers, the export and a later training step (``init_adapter``) use it exactly like the
``dict[str, bytes]`` of a LoRA adapter; a resumed or cloned run points at the same files.

Reading needs the datastore the run used: a local path (this machine) or ``s3://...``
(Metaflow's S3 client, imported only then).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

MODELS_DIR = "sso-models"


def file_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_path(key: str) -> str:
    """``<sha[:2]>/<sha>``, below the store's root."""
    return f"{key[:2]}/{key}"


class StoredFiles(Mapping):
    """``{name: bytes}`` read on demand from ``root`` (a local directory or an ``s3://`` URL)."""

    def __init__(self, root: str, keys: dict[str, str], sizes: dict[str, int] | None = None):
        self.root, self.keys = root.rstrip("/"), dict(keys)
        self.sizes = dict(sizes or {})

    def __repr__(self) -> str:
        total = sum(self.sizes.values())
        return f"StoredFiles({len(self.keys)} files, {total / 2**20:.1f} MiB at {self.root})"

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def url(self, name: str) -> str:
        return f"{self.root}/{key_path(self.keys[name])}"

    def __getitem__(self, name: str) -> bytes:
        url = self.url(name)           # KeyError for a name it does not hold
        if url.startswith("s3://"):
            from metaflow import S3

            with S3() as s3:
                data = s3.get(url).blob
        else:
            with open(url, "rb") as fh:
                data = fh.read()
        if file_key(data) != self.keys[name]:
            raise OSError(f"stored model file {name} at {url} is damaged (content hash differs)")
        return data

    def __eq__(self, other) -> bool:
        if isinstance(other, StoredFiles):
            return self.keys == other.keys
        return Mapping.__eq__(self, other)

    __hash__ = None


def save_files(storage, prefix: str, files: Mapping[str, bytes]) -> StoredFiles:
    """Write ``files`` under ``prefix`` of a Metaflow datastore storage (``LocalStorage`` /
    ``S3Storage``; files already there are not written again) and return their reference."""
    import io

    keys = {name: file_key(data) for name, data in files.items()}
    items = [(f"{prefix}/{key_path(keys[name])}", io.BytesIO(data)) for name, data in files.items()]
    storage.save_bytes(iter(items), overwrite=False, len_hint=len(items))
    root = storage.full_uri(prefix)
    return StoredFiles(root if "://" in root else os.path.abspath(root), keys,
                       {name: len(data) for name, data in files.items()})

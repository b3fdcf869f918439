"""Content-addressed JSON caches over one or more blob stores, safe for concurrent processes.

A record is a JSON object stored under a 64-hex key (a SHA-256 the caller computes over everything
that determines the record). A :class:`JSONCache` reads its tiers in order, the first that holds a
key wins and the tiers before it are filled in; it writes every tier. The tiers the project uses:

- :class:`DirStore`, a local directory: one file per key under ``<root>/<key[:2]>/<key>.json``,
  written to a temporary file in the same directory and moved into place with ``os.replace``
  (atomic on POSIX and Windows), so any number of processes may read and write at once and a
  reader sees either nothing or a whole entry;
- the flow's datastore (local directory or S3; ``flows/sso_store.py``), which every attempt of a
  task, every ``resume`` and every run of the flow on any machine shares: what was paid for once
  (a judge's answer, a principle model's reply) is never asked again.

A stored entry that cannot be read as a JSON object is treated as a miss and overwritten. Callers
that cache answers store only successful ones. ``flush()`` (or leaving the ``with`` block, also
on an exception) hands buffered writes to tiers that batch them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

HEX = frozenset("0123456789abcdef")


def content_key(*parts: str) -> str:
    """The hex SHA-256 of ``parts`` as a compact JSON list: a cache key over exact contents."""
    payload = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def check_key(key: str) -> str:
    """``key`` if it is 64 lower-case hex digits (a SHA-256), else ValueError (no path tricks)."""
    if len(key) != 64 or any(c not in HEX for c in key):
        raise ValueError(f"not a cache key: {key!r}")
    return key


def key_path(key: str) -> str:
    """The relative path of a key's entry: ``<key[:2]>/<key>.json``."""
    return f"{check_key(key)[:2]}/{key}.json"


class BlobStore(Protocol):
    """Bytes by cache key."""

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored bytes of the keys that are present."""

    def put(self, key: str, data: bytes) -> None:
        """Store (or buffer) ``data`` under ``key``."""

    def flush(self) -> None:
        """Write what ``put`` buffered."""


class DirStore:
    """A :class:`BlobStore` over a local directory (atomic files, see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"DirStore({str(self.root)!r})"

    def path_for(self, key: str) -> Path:
        return self.root / key_path(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        out = {}
        for key in keys:
            try:
                out[key] = self.path_for(key).read_bytes()
            except OSError:          # missing (or unreadable): a miss
                continue
        return out

    def put(self, key: str, data: bytes) -> None:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def flush(self) -> None:
        pass

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json")) if self.root.exists() else 0


def _decode(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def cache_tiers(root: str | os.PathLike | None, shared: BlobStore | None,
                default_root: str | os.PathLike) -> list[BlobStore]:
    """The tiers of a cache: the local directory ``root`` when given (``default_root`` when there
    is no ``shared`` store either), then ``shared`` (the flow's datastore)."""
    local = [DirStore(root or default_root)] if root or shared is None else []
    return local + ([shared] if shared is not None else [])


class JSONCache:
    """``get``/``get_many``/``put`` of JSON objects over ordered tiers (see the module docstring)."""

    def __init__(self, tiers: Iterable[BlobStore]):
        self.tiers = list(tiers)
        if not self.tiers:
            raise ValueError("a cache needs at least one store")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.tiers!r})"

    def get_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The readable records of the keys present in any tier."""
        found: dict[str, dict[str, Any]] = {}
        missing = list(dict.fromkeys(check_key(k) for k in keys))
        for i, tier in enumerate(self.tiers):
            if not missing:
                break
            for key, data in tier.get_many(missing).items():
                record = _decode(data)
                if record is None:
                    continue
                found[key] = record
                for earlier in self.tiers[:i]:          # fill the faster tiers in
                    earlier.put(key, data)
            missing = [k for k in missing if k not in found]
        return found

    def get(self, key: str) -> dict[str, Any] | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        data = json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")
        check_key(key)
        for tier in self.tiers:
            tier.put(key, data)

    def flush(self) -> None:
        for tier in self.tiers:
            tier.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def __len__(self) -> int:
        first = self.tiers[0]
        return len(first) if hasattr(first, "__len__") else 0

"""A content-addressed, persistent cache of raw judge outputs, safe for concurrent processes.

The key is the SHA-256 of (judge identity, prompt version, instruction, the reply in slot A, the
reply in slot B): the order a pair was shown in is the assignment of replies to slots, so the two
orders of one pair have two keys. The judge identity names the model and the decoding settings
(see ``transport.OpenAIJudge.judge_id`` / ``local.LocalJudge.judge_id``).

What is stored is the judge's *raw* output (text, label log-probs, token counts), never a verdict:
verdicts are re-derived by :mod:`sso.judge.parse` on every read, so a parser fix applies to cached
judgments too. Failed requests are never stored.

Storage: one small JSON file per key under ``<dir>/<key[:2]>/<key>.json``, written to a temporary
file in the same directory and moved into place with ``os.replace`` (atomic on POSIX and Windows):
any number of processes (foreach branches, a retried task, ``resume``) may read and write at once,
a reader sees either nothing or a whole entry, and two writers of one key write identical content.
A file that cannot be read as JSON (e.g. a disk filled up mid-write outside our atomic path) is
treated as a miss and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_SCHEMA = "sso-judge-cache-v1"


def compute_cache_key(judge_id: str, prompt_version: str, instruction: str,
                      output_a: str, output_b: str) -> str:
    """Hex SHA-256 over the judge, the prompt version and the exact contents of both slots."""
    payload = json.dumps([CACHE_SCHEMA, judge_id, prompt_version, instruction, output_a, output_b],
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def default_judge_cache_dir() -> Path:
    from sso.models.tiny import default_cache_dir

    return default_cache_dir() / "judge"


class JudgeCache:
    """``get(key) -> dict | None`` and ``put(key, record)`` over a directory of JSON files."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else default_judge_cache_dir()

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.root)!r})"

    def path_for(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self.path_for(key), encoding="utf-8") as fh:
                record = json.load(fh)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")
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

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json")) if self.root.exists() else 0

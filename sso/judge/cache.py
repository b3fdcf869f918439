"""A content-addressed, persistent cache of raw judge outputs, safe for concurrent processes.

The key is the SHA-256 of (judge identity, prompt version, instruction, the reply in slot A, the
reply in slot B): the order a pair was shown in is the assignment of replies to slots, so the two
orders of one pair have two keys. The judge identity names the model and the decoding settings
(see ``transport.OpenAIJudge.judge_id`` / ``local.LocalJudge.judge_id``).

What is stored is the judge's *raw* output (text, label log-probs, token counts), never a verdict:
verdicts are re-derived by :mod:`sso.judge.parse` on every read, so a parser fix applies to cached
judgments too. Failed requests are never stored.

Storage (:mod:`sso.cache`): inside the flow, the flow's datastore (local directory or S3), so a
retried attempt on a new container or a ``resume`` on another machine asks 0 questions already
answered; plus the local directory ``[judge] cache_dir`` when one is set (read first). Outside a
flow (no shared store) the local directory defaults to ``~/.cache/sso-flow/judge``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sso.cache import BlobStore, DirStore, JSONCache, cache_tiers, content_key

CACHE_SCHEMA = "sso-judge-cache-v1"


def compute_cache_key(judge_id: str, prompt_version: str, instruction: str,
                      output_a: str, output_b: str) -> str:
    """Hex SHA-256 over the judge, the prompt version and the exact contents of both slots."""
    return content_key(CACHE_SCHEMA, judge_id, prompt_version, instruction, output_a, output_b)


def default_judge_cache_dir() -> Path:
    from sso.models.tiny import default_cache_dir

    return default_cache_dir() / "judge"


class JudgeCache(JSONCache):
    """The judge's :class:`~sso.cache.JSONCache`: the local directory ``root`` (default
    ``~/.cache/sso-flow/judge`` when there is no ``shared`` store, else none unless given), then
    the ``shared`` store (the flow's datastore)."""

    def __init__(self, root: str | os.PathLike | None = None, *, shared: BlobStore | None = None):
        super().__init__(cache_tiers(root, shared, default_judge_cache_dir()))
        first = self.tiers[0]
        self.root = first.root if isinstance(first, DirStore) else None

    def path_for(self, key: str) -> Path:
        """The local file of a key (a cache with a local directory only)."""
        if self.root is None:
            raise ValueError("this judge cache has no local directory")
        return DirStore(self.root).path_for(key)

"""Cached principle requests: a model-written principle is asked for once, whatever fails later.

:class:`CachedPrincipleModel` wraps a :class:`~sso.data.principle_writer.PrincipleModel`. Each
request (one single-turn user message: the bad-principle request of a query, or its good-principle
request, which quotes the bad guideline) is keyed by the SHA-256 of (schema, the model's identity,
the decoding parameters, the message); its reply is stored the moment its chunk of requests comes
back. A retried attempt, a ``resume`` or a later run with the same model, parameters and queries
(on any machine, with the flow's datastore as the cache's shared tier) re-asks none of them. Failed
requests are never stored. Requests go to the model in chunks of ``chunk`` messages, so a task
killed half way keeps every finished chunk; larger chunks keep a vLLM engine's batches full.
"""

from __future__ import annotations

from typing import Callable, Sequence

from sso.cache import JSONCache, content_key

SCHEMA = "sso-principle-cache-v1"
DEFAULT_CHUNK = 256


def principle_key(identity: str, params, message: str) -> str:
    """The cache key of one principle request (hex SHA-256)."""
    return content_key(SCHEMA, identity, repr(params), message)


class CachedPrincipleModel:
    """A principle model whose replies come from ``cache`` when it holds them.

    ``factory()`` builds the real model on the first request the cache cannot answer (a run whose
    principles are all cached never loads a model). ``identity`` names everything besides the
    message and the parameters that decides a reply: backend, model (path or endpoint and name)
    and run seed. ``hits`` and ``asked`` count requests.
    """

    def __init__(self, factory: Callable[[], object], cache: JSONCache, identity: str, name: str, *,
                 chunk: int = DEFAULT_CHUNK):
        self.factory, self.cache, self.identity, self.name, self.chunk = factory, cache, identity, name, chunk
        self.model = None
        self.hits = self.asked = 0

    def complete(self, user_messages: Sequence[str], params) -> list[str | BaseException]:
        keys = [principle_key(self.identity, params, m) for m in user_messages]
        found = self.cache.get_many(keys)
        replies: list = [found[k].get("text") if k in found else None for k in keys]
        self.hits += sum(r is not None for r in replies)
        todo = [i for i, r in enumerate(replies) if r is None]
        for start in range(0, len(todo), self.chunk):
            part = todo[start:start + self.chunk]
            self.model = self.model or self.factory()
            answers = self.model.complete([user_messages[i] for i in part], params)
            self.asked += len(part)
            for i, answer in zip(part, answers):
                replies[i] = answer
                if isinstance(answer, str):
                    self.cache.put(keys[i], {"text": answer})
            self.cache.flush()
        return replies

    def close(self) -> None:
        self.cache.flush()
        if self.model is not None:
            self.model.close()

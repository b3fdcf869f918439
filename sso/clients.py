"""OpenAI-compatible endpoints: one client set-up and one key policy, shared by the judge transport
(:mod:`sso.judge.transport`) and the endpoint sampler (:mod:`sso.generation.openai_sampler`).

Key policy
    The key is read from the environment variable whose *name* is configured, once, when an
    :class:`EndpointClient` is built. From then on it is held in one place only: the
    ``openai.OpenAI`` client's ``api_key`` (the client needs it to send it). It is never copied to
    another attribute, a config, an artifact, a record, a log line or a message:
    ``EndpointClient.__repr__`` names the endpoint and the variable, never the value, and the
    object refuses to be pickled (so neither it nor an object holding it can end up in a Metaflow
    artifact). Every error text built from a client exception goes through
    :meth:`EndpointClient.redact`, which replaces the key the client sends with ``[REDACTED]`` (a
    server may quote the ``Authorization`` header back). A loopback endpoint (a local vLLM
    server, a test server) needs no key and gets a placeholder.

Also here: :func:`run_bounded` (many requests with bounded concurrency) and :class:`UsageCounter`
(thread-safe request/token counts). Nothing here imports ``openai`` at module load.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOOPBACK_KEY = "sso-no-key"
REDACTED = "[REDACTED]"

T = TypeVar("T")
R = TypeVar("R")


def is_loopback_url(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "") if base_url else ""
    return host in ("localhost", "::1", "0.0.0.0") or host.startswith("127.")


def describe_endpoint(base_url: str) -> str:
    """The endpoint for messages, without any ``user:password@`` part of the URL."""
    if not base_url:
        return f"{DEFAULT_BASE_URL} (default)"
    parts = urlsplit(base_url)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def api_key_from_env(api_key_env: str, base_url: str) -> str | None:
    """The key in ``os.environ[api_key_env]``; a placeholder for a loopback endpoint; else None
    (the caller raises an error naming the variable, never a value)."""
    value = os.environ.get(api_key_env, "").strip()
    if value:
        return value
    if base_url and is_loopback_url(base_url):
        return LOOPBACK_KEY
    return None


def redact_secret(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``[REDACTED]`` (no-op without one)."""
    return text.replace(secret, REDACTED) if isinstance(secret, str) and secret else text


def read_token_usage(response: Any) -> tuple[int, int]:
    """(prompt tokens, completion tokens) as a completion's ``usage`` reports them; 0 where absent."""
    usage = getattr(response, "usage", None)
    return (int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0))


class UsageCounter:
    """Thread-safe integer counters (requests, tokens, retries, ...) named when it is built."""

    def __init__(self, *names: str):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(names, 0)

    def add(self, **incr: int) -> None:
        with self._lock:
            for name, value in incr.items():
                self._counts[name] += value

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class EndpointClient:
    """An ``openai.OpenAI`` client for one endpoint (``api``) under the module's key policy.

    ``base_url`` empty means api.openai.com (not whatever ``OPENAI_BASE_URL`` says). ``timeout_s``
    is per HTTP request; ``max_retries`` is the client's own retry loop (408/409/429/5xx,
    connection errors, timeouts; exponential backoff honouring ``Retry-After``). A missing key
    raises ``missing_key(message)`` (default ``ValueError``) with a message naming the variable.
    ``client`` injects a ready client instead (it then carries its own key).
    """

    def __init__(self, base_url: str, api_key_env: str, *, timeout_s: float, max_retries: int,
                 client: Any = None,
                 missing_key: Callable[[str], Exception] = ValueError):
        self.endpoint = describe_endpoint(base_url)
        self.api_key_env = api_key_env
        if client is None:
            import openai

            key = api_key_from_env(api_key_env, base_url)
            if key is None:
                raise missing_key(f"endpoint {self.endpoint} needs an API key in the environment "
                                  f"variable {api_key_env}, which is not set or empty")
            client = openai.OpenAI(api_key=key, base_url=base_url or DEFAULT_BASE_URL,
                                   timeout=timeout_s, max_retries=max_retries)
            del key
        self.api = client

    def __repr__(self) -> str:
        return f"EndpointClient(endpoint={self.endpoint!r}, api_key_env={self.api_key_env!r})"

    def __getstate__(self):
        raise TypeError("EndpointClient holds an API client and is not picklable; store its outputs")

    def redact(self, text: str) -> str:
        """``text`` without the key this client sends."""
        return redact_secret(text, getattr(self.api, "api_key", None))

    def close(self) -> None:
        close = getattr(self.api, "close", None)
        if callable(close):
            close()


def run_bounded(fn: Callable[[T], R], items: Sequence[T], *, max_concurrency: int,
                catch: type[BaseException] | tuple[type[BaseException], ...] = Exception,
                stop_on_error: bool = False, on_result: Callable[[int, R], None] | None = None,
                thread_name_prefix: str = "sso-openai",
                ) -> tuple[list[R | BaseException | None], list[BaseException]]:
    """``fn(item)`` for every item with at most ``max_concurrency`` calls in flight (a thread pool).

    Returns (one entry per item, in item order; the exceptions caught, in the order raised). An
    exception of a ``catch`` type stands in its item's entry. With ``stop_on_error`` no call starts
    after the first caught exception (the calls in flight finish; the skipped entries are None).
    ``on_result(index, result)`` runs in the worker right after a call succeeds. Any other
    exception (from ``fn`` or ``on_result``) cancels the calls not yet started and is re-raised.
    """
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    if not items:
        return results, errors
    stop = threading.Event()
    lock = threading.Lock()

    def work(i: int) -> None:
        if stop.is_set():
            return
        try:
            results[i] = fn(items[i])
        except catch as exc:
            if stop_on_error:
                stop.set()
            with lock:
                errors.append(exc)
            results[i] = exc
            return
        if on_result is not None:
            on_result(i, results[i])

    workers = max(1, min(max_concurrency, len(items)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix) as pool:
        futures = [pool.submit(work, i) for i in range(len(items))]
        try:
            for fut in futures:
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return results, errors

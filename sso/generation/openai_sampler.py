"""A sampler over any OpenAI-compatible endpoint (OpenAI, a vLLM server, ...).

It exists for principle generation by a large remote model (the paper had Qwen2.5-72B-Instruct
write the principles), so its main entry point is :meth:`OpenAISampler.chat`: a list of chat
conversations in, ``params.n`` :class:`~sso.generation.sampling.Completion` per conversation out, in order.

- Bounded concurrency: at most ``max_concurrency`` requests in flight (a thread pool).
- Retries: the ``openai`` client retries connection errors, timeouts, HTTP 408/409/429 and 5xx
  ``max_retries`` times with exponential backoff (honouring ``Retry-After``); a malformed HTTP-200
  body (no choices, not JSON) is retried here the same number of times.
- A per-request timeout (``timeout_s``).
- The API key is read from the environment variable whose NAME is configured (``api_key_env``)
  when the client is built. It is handed to the client only: never stored on this object's
  attributes, never logged, redacted from every error message this module raises, and the sampler
  refuses to be pickled (so it cannot end up in a Metaflow artifact). A loopback endpoint (a local
  vLLM server) works without a key.
- Usage accounting: requests, failures, prompt and completion tokens (:attr:`usage`).

``chat(..., return_exceptions=True)`` returns the exception in place of a failed conversation's
completions, so one bad request does not sink a batch of thousands; the caller decides.
:meth:`generate` serves already-rendered prompt strings through the completions endpoint, to fit
the :class:`~sso.generation.sampling.Sampler` protocol (``tokenizer`` is ``None``: the endpoint owns it).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from sso.generation.sampling import Completion, GenerationParams
from sso.clients import DEFAULT_BASE_URL, api_key_from_env, describe_endpoint

log = logging.getLogger(__name__)


class EndpointError(RuntimeError):
    """A request to the endpoint failed for good (after retries); the key is never in the text."""


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class OpenAISampler:
    """Chat (and text) completions from an OpenAI-compatible endpoint."""

    tokenizer = None   # the endpoint applies its own chat template

    def __init__(self, model: str, *, base_url: str = "", api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 8, max_retries: int = 5, timeout_s: float = 120.0,
                 client: Any = None):
        if not model or not model.strip():
            raise ValueError("OpenAISampler needs the endpoint's model name")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.model = model
        self.endpoint = describe_endpoint(base_url)
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self._lock = threading.Lock()
        self.usage = {"requests": 0, "failed": 0, "malformed_retries": 0,
                      "prompt_tokens": 0, "completion_tokens": 0}
        if client is None:
            import openai

            key = api_key_from_env(api_key_env, base_url)
            if key is None:
                raise ValueError(
                    f"endpoint {self.endpoint} needs an API key in the environment variable "
                    f"{api_key_env}, which is not set or empty")
            # an empty base_url means api.openai.com, not whatever OPENAI_BASE_URL says
            client = openai.OpenAI(api_key=key, base_url=base_url or DEFAULT_BASE_URL,
                                   timeout=timeout_s, max_retries=max_retries)
            del key
        self._client = client

    def __repr__(self) -> str:
        return f"OpenAISampler(model={self.model!r}, endpoint={self.endpoint!r})"

    def __getstate__(self):
        raise TypeError("OpenAISampler holds an API client and is not picklable; store its outputs")

    # ------------------------------------------------------------------ helpers
    def _redact(self, text: str) -> str:
        secret = os.environ.get(self.api_key_env, "").strip()   # read again, never kept here
        return text.replace(secret, "[REDACTED]") if secret else text

    def _count(self, **incr: int) -> None:
        with self._lock:
            for k, v in incr.items():
                self.usage[k] += v

    def _request_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": self.model, "n": params.n, "max_tokens": params.max_new_tokens,
                              "seed": params.seed}
        if params.is_greedy:
            kw["temperature"] = 0.0
        else:
            kw.update(temperature=params.temperature, top_p=params.top_p)
        return kw

    def _call(self, create, kwargs: dict[str, Any], extract) -> list[Completion]:
        """One request with the client's retries plus retries of malformed 200 replies."""
        import openai

        for attempt in range(self.max_retries + 1):
            try:
                resp = create(**kwargs)
                comps = extract(resp)
            except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError,
                    KeyError, IndexError) as exc:
                if attempt < self.max_retries:
                    self._count(malformed_retries=1)
                    continue
                self._count(failed=1)
                raise EndpointError(self._redact(
                    f"{self.endpoint} sent malformed replies ({type(exc).__name__}: {exc})")) from None
            except openai.OpenAIError as exc:
                self._count(failed=1)
                status = getattr(exc, "status_code", None)
                what = f"HTTP {status}" if status else type(exc).__name__
                raise EndpointError(self._redact(
                    f"request to {self.endpoint} (model {self.model!r}) failed: {what}: {exc}")) from None
            usage = getattr(resp, "usage", None)
            self._count(requests=1, prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))
            return comps
        raise AssertionError("unreachable")

    @staticmethod
    def _split_tokens(resp, n: int) -> int:
        usage = getattr(resp, "usage", None)
        total = int(getattr(usage, "completion_tokens", 0) or 0)
        return round(total / max(n, 1))

    def _run(self, jobs: list, one, return_exceptions: bool) -> list:
        results: list[Any] = [None] * len(jobs)

        def work(i: int) -> None:
            try:
                results[i] = one(jobs[i])
            except EndpointError as exc:
                results[i] = exc

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(jobs) or 1)),
                                thread_name_prefix="sso-openai") as pool:
            list(pool.map(work, range(len(jobs))))
        if not return_exceptions:
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise EndpointError(f"{len(failed)} of {len(jobs)} requests failed; first: {failed[0]}")
        return results

    def _completions(self, resp, text_of) -> list[Completion]:
        """One Completion per choice of a reply, in choice order (``text_of`` reads a choice's text)."""
        choices = sorted(resp.choices, key=lambda c: c.index)
        if not choices:
            raise ValueError("reply has no choices")
        per = self._split_tokens(resp, len(choices))
        return [Completion(text=str(text_of(c) or ""), n_tokens=per, finish_reason=_finish(c.finish_reason))
                for c in choices]

    # ------------------------------------------------------------------ API
    def chat(self, conversations: Sequence[list[dict[str, str]]], params: GenerationParams, *,
             return_exceptions: bool = False) -> list[list[Completion] | EndpointError]:
        """``params.n`` completions per conversation (a list of role/content messages), in order."""
        base = self._request_kwargs(params)

        def extract(resp) -> list[Completion]:
            return self._completions(resp, lambda c: c.message.content)

        def one(messages):
            return self._call(self._client.chat.completions.create, {**base, "messages": messages},
                              extract)

        return self._run(list(conversations), one, return_exceptions)

    def generate(self, prompts: Sequence[str], params: GenerationParams, progress=None) -> list[list[Completion]]:
        """Rendered prompts through the text-completions endpoint (the Sampler protocol)."""
        base = self._request_kwargs(params)

        def extract(resp) -> list[Completion]:
            return self._completions(resp, lambda c: c.text)

        def one(prompt):
            return self._call(self._client.completions.create, {**base, "prompt": prompt}, extract)

        out = self._run(list(prompts), one, return_exceptions=False)
        if progress is not None:
            progress.update(len(prompts))
        return out

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if callable(close):
            close()

"""A sampler over any OpenAI-compatible endpoint (OpenAI, a vLLM server, ...).

It exists for principle generation by a large remote model (the paper had Qwen2.5-72B-Instruct
write the principles), so its main entry point is :meth:`OpenAISampler.chat`: a list of chat
conversations in, ``params.n`` :class:`~sso.generation.sampling.Completion` per conversation out, in order.

- Bounded concurrency: at most ``max_concurrency`` requests in flight (a thread pool).
- Retries: the ``openai`` client retries connection errors, timeouts, HTTP 408/409/429 and 5xx
  ``max_retries`` times with exponential backoff (honouring ``Retry-After``); a malformed HTTP-200
  body (no choices, not JSON) is retried here the same number of times.
- A per-request timeout (``timeout_s``).
- The API key follows the one policy of :mod:`sso.clients`: read from the environment variable
  whose NAME is configured (``api_key_env``) when the client is built, held only by the
  ``openai`` client inside :class:`~sso.clients.EndpointClient`, never logged, redacted from
  every error message this module raises; the sampler refuses to be pickled (so it cannot end up
  in a Metaflow artifact). A loopback endpoint (a local vLLM server) works without a key.
- Usage accounting: requests, failures, prompt and completion tokens (:attr:`usage`).

``chat(..., return_exceptions=True)`` returns the exception in place of a failed conversation's
completions, so one bad request does not sink a batch of thousands; the caller decides.
:meth:`generate` serves already-rendered prompt strings through the completions endpoint, to fit
the :class:`~sso.generation.sampling.Sampler` protocol (``tokenizer`` is ``None``: the endpoint owns it).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from sso.clients import EndpointClient, UsageCounter, read_token_usage, run_bounded
from sso.generation.sampling import Completion, GenerationParams

log = logging.getLogger(__name__)

USAGE_KEYS = ("requests", "failed", "malformed_retries", "prompt_tokens", "completion_tokens")


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
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self._usage = UsageCounter(*USAGE_KEYS)
        self.client = EndpointClient(base_url, api_key_env, timeout_s=timeout_s,
                                     max_retries=max_retries, client=client)
        self.endpoint = self.client.endpoint

    def __repr__(self) -> str:
        return f"OpenAISampler(model={self.model!r}, endpoint={self.endpoint!r})"

    def __getstate__(self):
        raise TypeError("OpenAISampler holds an API client and is not picklable; store its outputs")

    @property
    def usage(self) -> dict[str, int]:
        """requests, failed, malformed_retries, prompt_tokens, completion_tokens (so far)."""
        return self._usage.snapshot()

    # ------------------------------------------------------------------ helpers
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
                    self._usage.add(malformed_retries=1)
                    continue
                self._usage.add(failed=1)
                raise EndpointError(self.client.redact(
                    f"{self.endpoint} sent malformed replies ({type(exc).__name__}: {exc})")) from None
            except openai.OpenAIError as exc:
                self._usage.add(failed=1)
                status = getattr(exc, "status_code", None)
                what = f"HTTP {status}" if status else type(exc).__name__
                raise EndpointError(self.client.redact(
                    f"request to {self.endpoint} (model {self.model!r}) failed: {what}: {exc}")) from None
            prompt_tokens, completion_tokens = read_token_usage(resp)
            self._usage.add(requests=1, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            return comps
        raise AssertionError("unreachable")

    def _run(self, jobs: list, one, return_exceptions: bool) -> list:
        results, errors = run_bounded(one, jobs, max_concurrency=self.max_concurrency,
                                      catch=EndpointError, thread_name_prefix="sso-openai")
        if errors and not return_exceptions:
            failed = [r for r in results if isinstance(r, BaseException)]
            raise EndpointError(f"{len(failed)} of {len(jobs)} requests failed; first: {failed[0]}")
        return results

    @staticmethod
    def _completions(resp, text_of) -> list[Completion]:
        """One Completion per choice of a reply, in choice order (``text_of`` reads a choice's text)."""
        choices = sorted(resp.choices, key=lambda c: c.index)
        if not choices:
            raise ValueError("reply has no choices")
        per = round(read_token_usage(resp)[1] / max(len(choices), 1))
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
            return self._call(self.client.api.chat.completions.create, {**base, "messages": messages},
                              extract)

        return self._run(list(conversations), one, return_exceptions)

    def generate(self, prompts: Sequence[str], params: GenerationParams, progress=None) -> list[list[Completion]]:
        """Rendered prompts through the text-completions endpoint (the Sampler protocol)."""
        base = self._request_kwargs(params)

        def extract(resp) -> list[Completion]:
            return self._completions(resp, lambda c: c.text)

        def one(prompt):
            return self._call(self.client.api.completions.create, {**base, "prompt": prompt}, extract)

        out = self._run(list(prompts), one, return_exceptions=False)
        if progress is not None:
            progress.update(len(prompts))
        return out

    def close(self) -> None:
        self.client.close()

"""The remote judge: any OpenAI-compatible chat-completions endpoint through the ``openai`` client.

- **Key.** Read from ``os.environ[cfg.api_key_env]`` when the judge is built (i.e. at call time),
  handed to the client and nowhere else: never stored in a record, a returned object, a log line
  or an exception message (every error text we raise is passed through :meth:`OpenAIJudge._redact`
  and raised ``from None`` so the client's exception, which may quote a server's reply, is not
  chained). A loopback endpoint (vLLM on 127.0.0.1) needs no key.
- **Retries.** The client's own retry loop handles 408/409/429/5xx, connection errors and
  timeouts: ``max_retries`` retries with exponential backoff (0.5 s doubling to 8 s, with jitter;
  a server's ``Retry-After``/``retry-after-ms`` of up to 2 min is honoured). It does not retry a
  200 reply whose body is not a chat completion (malformed JSON, no choices): we retry those
  ourselves, with the same backoff schedule and the same ``max_retries``.
- **Timeout.** ``timeout_s`` per HTTP request (the client's ``timeout``).
- **Concurrency.** At most ``max_concurrency`` requests in flight (a thread pool over one client).
  When a request fails for good (endpoint unreachable, retries used up, key rejected), no new
  request starts, the ones in flight finish (and are cached by the caller), and the error is raised.
- **Verdicts.** Requests ask for ``logprobs`` with ``TOP_LOGPROBS`` alternatives at temperature 0;
  the first position's label log-probs go into the record (see ``parse.decide_verdict``). An
  endpoint that rejects ``logprobs`` with HTTP 400 is asked again without them (text verdicts).
- **Accounting.** Requests, HTTP attempts (retries included), prompt/completion tokens as the
  server reports them, and the cost from :data:`PRICES_PER_1M_TOKENS`.
- **Budget guard.** :func:`estimate_run` / :func:`check_budget`: before the first request, the
  number of uncached requests and their cost (prompt tokens estimated as characters / 4, completion
  tokens at the ``MAX_TOKENS`` ceiling) are compared with ``max_requests`` / ``max_cost_usd``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from sso.config import ConfigError, JudgeConfig
from sso.clients import DEFAULT_BASE_URL, api_key_from_env, describe_endpoint
from sso.judge.parse import collect_label_logprobs
from sso.judge.prompts import MAX_TOKENS, TOP_LOGPROBS

log = logging.getLogger("sso.judge")


# USD per 1M tokens (prompt, completion): OpenAI list prices. A model name matches the longest
# entry it starts with ("gpt-4o-2024-08-06" -> "gpt-4o"). Any other model is priced at
# DEFAULT_PRICE, deliberately GPT-4's (the most expensive here), so that the budget guard
# over- rather than under-estimates for an unknown model. Check current prices before relying on it.
PRICES_PER_1M_TOKENS: dict[str, tuple[float, float]] = {
    "gpt-4-1106-preview": (10.0, 30.0),   # the paper's judge
    "gpt-4-0125-preview": (10.0, 30.0),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4-32k": (60.0, 120.0),
    "gpt-4": (30.0, 60.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.0),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.0, 8.0),
    "gpt-3.5-turbo": (0.50, 1.50),
}
DEFAULT_PRICE: tuple[float, float] = (30.0, 60.0)

_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 8.0


class JudgeError(RuntimeError):
    """The judge could not produce judgments (the step fails; cached judgments persist)."""


class JudgeUnavailableError(JudgeError):
    """The endpoint stayed unreachable, overloaded or broken after all retries."""


class JudgeRequestError(JudgeError):
    """The endpoint refused a request for good (bad key, unknown model, bad request)."""


class BudgetExceededError(JudgeError):
    """The estimated requests or cost exceed the configured budget."""


class MalformedResponseError(ValueError):
    """An HTTP 200 reply that is not a usable chat completion."""


def resolve_api_key(jcfg: JudgeConfig) -> str:
    """The key from the environment variable *named* by ``api_key_env``.

    Raises a :class:`ConfigError` naming the variable (never a value) when it is unset and the
    endpoint is not on this machine; a loopback endpoint gets a placeholder key.
    """
    value = api_key_from_env(jcfg.api_key_env, jcfg.base_url)
    if value is not None:
        return value
    raise ConfigError(
        f"[judge] backend = 'openai' with endpoint {describe_endpoint(jcfg.base_url)} needs an API "
        f"key in the environment variable {jcfg.api_key_env}, which is not set or empty "
        f"(set it, or use backend = 'local')")


def price_for(model: str) -> tuple[float, float, str]:
    """(USD per 1M prompt tokens, per 1M completion tokens, the price-table entry used)."""
    best = ""
    for name in PRICES_PER_1M_TOKENS:
        if model.startswith(name) and len(name) > len(best):
            best = name
    if best:
        return (*PRICES_PER_1M_TOKENS[best], best)
    return (*DEFAULT_PRICE, "default")


def compute_cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    p_in, p_out, _ = price_for(model)
    return (prompt_tokens * p_in + completion_tokens * p_out) / 1e6


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """A model-free estimate: ~4 characters per token plus a few tokens of chat framing."""
    return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages) + 3


def estimate_run(todo: dict[str, list[dict[str, str]]] | list[list[dict[str, str]]],
                 model: str) -> dict[str, Any]:
    """Requests, tokens and cost of asking every message list in ``todo`` once."""
    msgs = list(todo.values()) if isinstance(todo, dict) else list(todo)
    prompt_tokens = sum(estimate_prompt_tokens(m) for m in msgs)
    completion_tokens = MAX_TOKENS * len(msgs)
    p_in, p_out, entry = price_for(model)
    return {"requests": len(msgs), "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": compute_cost_usd(model, prompt_tokens, completion_tokens),
            "price_entry": entry, "price_in": p_in, "price_out": p_out}


def check_budget(estimate: dict[str, Any], jcfg: JudgeConfig, *, what: str = "the judge") -> None:
    """Raise :class:`BudgetExceededError` (stating the estimate) if it exceeds the configured caps."""
    over = []
    if jcfg.max_requests and estimate["requests"] > jcfg.max_requests:
        over.append(f"[judge] max_requests = {jcfg.max_requests}")
    if jcfg.max_cost_usd and estimate["cost_usd"] > jcfg.max_cost_usd:
        over.append(f"[judge] max_cost_usd = {jcfg.max_cost_usd:g}")
    if over:
        raise BudgetExceededError(
            f"{what} would make {estimate['requests']} uncached requests to {jcfg.model} "
            f"(estimated {estimate['prompt_tokens']} prompt + {estimate['completion_tokens']} "
            f"completion tokens, ~${estimate['cost_usd']:.2f} at {estimate['price_entry']} prices "
            f"${estimate['price_in']:g}/${estimate['price_out']:g} per 1M tokens), over "
            f"{' and '.join(over)}; raise the limit or judge fewer pairs "
            f"(cached judgments cost nothing)")


def extract_record(completion: Any) -> dict[str, Any]:
    """The raw judge output we keep from one chat completion (raises MalformedResponseError)."""
    choices = getattr(completion, "choices", None)
    if not choices:
        raise MalformedResponseError("reply has no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    if message is None:
        raise MalformedResponseError("reply has no message")
    text = getattr(message, "content", None)
    if text is None:
        text = getattr(message, "refusal", None)   # a refusal is an (unparsable) answer
    if text is None:
        raise MalformedResponseError("reply has neither content nor refusal")
    if not isinstance(text, str):
        raise MalformedResponseError(f"reply content is a {type(text).__name__}, not text")
    label_logprobs = None
    lp = getattr(choice, "logprobs", None)
    content = getattr(lp, "content", None) if lp is not None else None
    if content:
        first = content[0]
        tops = {t.token: t.logprob for t in (getattr(first, "top_logprobs", None) or [])}
        if getattr(first, "token", None) is not None and first.logprob is not None:
            tops.setdefault(first.token, first.logprob)
        label_logprobs = collect_label_logprobs(tops)
    usage = getattr(completion, "usage", None)
    return {
        "text": text,
        "label_logprobs": label_logprobs,
        "forced": False,
        "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
        "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
        "model": str(getattr(completion, "model", "") or ""),
        "finish_reason": str(getattr(choice, "finish_reason", "") or ""),
    }


class OpenAIJudge:
    """A :class:`~sso.judge.protocol.JudgeBackend` over an OpenAI-compatible endpoint."""

    def __init__(self, jcfg: JudgeConfig, *, client: Any = None,
                 backoff_s: float = _BACKOFF_S, max_backoff_s: float = _MAX_BACKOFF_S):
        self.cfg = jcfg
        self.judge_id = f"openai:{jcfg.model}:t0:max{MAX_TOKENS}"
        self.endpoint = describe_endpoint(jcfg.base_url)
        self._secret = resolve_api_key(jcfg)
        if client is None:
            import openai

            client = openai.OpenAI(api_key=self._secret, base_url=jcfg.base_url or DEFAULT_BASE_URL,
                                   timeout=jcfg.timeout_s, max_retries=jcfg.max_retries)
        self._client = client
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._want_logprobs = True
        self._lock = threading.Lock()
        self._usage = {"requests": 0, "http_attempts": 0, "malformed_retries": 0,
                       "prompt_tokens": 0, "completion_tokens": 0}

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.cfg.model!r}, endpoint={self.endpoint!r})"

    def __getstate__(self):
        raise TypeError("OpenAIJudge holds a client and is not picklable; store its results instead")

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "[REDACTED]") if self._secret else text

    def _count(self, **incr: int) -> None:
        with self._lock:
            for k, v in incr.items():
                self._usage[k] += v

    def _sleep_backoff(self, attempt: int) -> None:
        delay = min(self._backoff_s * 2 ** (attempt - 1), self._max_backoff_s)
        time.sleep(delay * (1 - 0.25 * random.random()))

    def complete(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """One judgment (raw record); retries per the module docstring, then raises a JudgeError."""
        import openai

        tries = self.cfg.max_retries + 1
        malformed = 0
        while True:
            params: dict[str, Any] = {"model": self.cfg.model, "messages": messages,
                                      "temperature": 0.0, "max_tokens": MAX_TOKENS}
            if self._want_logprobs:
                params.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
            try:
                raw = self._client.chat.completions.with_raw_response.create(**params)
                self._count(http_attempts=1 + int(getattr(raw, "retries_taken", 0) or 0))
                record = extract_record(raw.parse())
            except openai.BadRequestError as exc:
                self._count(http_attempts=1)
                if params.get("logprobs") and "logprob" in str(exc).lower():
                    if self._want_logprobs:
                        log.warning("judge endpoint %s rejects logprobs; using text verdicts",
                                    self.endpoint)
                    self._want_logprobs = False
                    continue
                raise JudgeRequestError(self._redact(
                    f"judge endpoint {self.endpoint} rejected the request (HTTP 400): {exc}")) from None
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                self._count(http_attempts=1)
                raise JudgeRequestError(self._redact(
                    f"judge endpoint {self.endpoint} refused the API key from the environment "
                    f"variable {self.cfg.api_key_env} (HTTP {exc.status_code}): {exc}")) from None
            except openai.NotFoundError as exc:
                self._count(http_attempts=1)
                raise JudgeRequestError(self._redact(
                    f"judge endpoint {self.endpoint} does not serve model {self.cfg.model!r} "
                    f"(HTTP 404): {exc}")) from None
            except openai.APIConnectionError as exc:   # includes APITimeoutError
                self._count(http_attempts=tries)
                kind = "timed out" if isinstance(exc, openai.APITimeoutError) else "unreachable"
                raise JudgeUnavailableError(self._redact(
                    f"judge endpoint {self.endpoint} {kind} after {tries} attempts "
                    f"(timeout {self.cfg.timeout_s:g} s each): {type(exc).__name__}: {exc}. "
                    f"Judgments received so far are cached; re-run or `resume` once it is back")
                ) from None
            except openai.APIStatusError as exc:
                retryable = exc.status_code in (408, 409, 429) or exc.status_code >= 500
                self._count(http_attempts=tries if retryable else 1)
                cls = JudgeUnavailableError if retryable else JudgeRequestError
                after = f" after {tries} attempts" if retryable else ""
                raise cls(self._redact(
                    f"judge endpoint {self.endpoint} answered HTTP {exc.status_code}{after}: {exc}. "
                    f"Judgments received so far are cached; re-run or `resume` later")) from None
            except (openai.APIResponseValidationError, ValueError) as exc:   # malformed 200 body
                malformed += 1
                self._count(malformed_retries=1)
                if malformed >= tries:
                    raise JudgeUnavailableError(self._redact(
                        f"judge endpoint {self.endpoint} sent {malformed} malformed replies in a row "
                        f"({type(exc).__name__}: {exc})")) from None
                log.info("judge: malformed reply from %s (%s); retrying", self.endpoint,
                         type(exc).__name__)
                self._sleep_backoff(malformed)
                continue
            self._count(requests=1, prompt_tokens=record["prompt_tokens"],
                        completion_tokens=record["completion_tokens"])
            return record

    def complete_many(self, jobs: list[tuple[str, list[dict[str, str]]]],
                      on_done: Callable[[str, dict[str, Any]], None]) -> None:
        if not jobs:
            return
        stop = threading.Event()
        errors: list[BaseException] = []

        def work(key: str, messages: list[dict[str, str]]) -> None:
            if stop.is_set():
                return
            try:
                record = self.complete(messages)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
                stop.set()
                errors.append(exc)
                return
            on_done(key, record)

        workers = max(1, min(self.cfg.max_concurrency, len(jobs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sso-judge") as pool:
            futures = [pool.submit(work, key, messages) for key, messages in jobs]
            for fut in futures:
                fut.result()
        if errors:
            first = errors[0]
            if isinstance(first, JudgeError):
                raise type(first)(f"{first} [{len(errors)} request(s) failed; "
                                  f"{self._usage['requests']} answered this run]") from None
            raise JudgeError(self._redact(f"judge request failed: {type(first).__name__}: {first}")) from None

    def usage(self) -> dict[str, Any]:
        with self._lock:
            u = dict(self._usage)
        u["est_cost_usd"] = compute_cost_usd(self.cfg.model, u["prompt_tokens"], u["completion_tokens"])
        return u

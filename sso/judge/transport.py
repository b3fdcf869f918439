"""The remote judge: any OpenAI-compatible chat-completions endpoint through the ``openai`` client.

- **Key.** The policy of :mod:`sso.clients`: read from ``os.environ[cfg.api_key_env]`` when the
  judge is built (i.e. at call time) and held only by the ``openai`` client inside the judge's
  :class:`~sso.clients.EndpointClient` (``OpenAIJudge.client``). It is never stored in a record, a
  returned object, a log line or an exception message, never printed (``repr``) and never pickled
  (``OpenAIJudge`` refuses to be): every error text we raise is passed through
  :meth:`EndpointClient.redact <sso.clients.EndpointClient.redact>` and raised ``from None``, so the
  client's exception, which may quote a server's reply, is not chained. A loopback endpoint (vLLM
  on 127.0.0.1) needs no key.
- **Retries.** The client's own retry loop handles 408/409/429/5xx, connection errors and
  timeouts: ``max_retries`` retries with exponential backoff (0.5 s doubling to 8 s, with jitter;
  a server's ``Retry-After``/``retry-after-ms`` of up to 2 min is honoured). It does not retry a
  200 reply whose body is not a chat completion (malformed JSON, no choices): we retry those
  ourselves, with the same backoff schedule and the same ``max_retries``.
- **Timeout.** ``timeout_s`` per HTTP request (the client's ``timeout``).
- **Concurrency.** At most ``max_concurrency`` requests in flight (:func:`sso.clients.run_bounded`
  over one client).
  When a request fails for good (endpoint unreachable, retries used up, key rejected), no new
  request starts, the ones in flight finish (and are cached by the caller), and the error is raised.
- **Prompt.** Each judgment arrives as its parts (:class:`~sso.judge.prompts.JudgeParts`) and is
  rendered here as the judge's chat messages (:func:`~sso.judge.prompts.render_judge_messages`).
- **Verdicts.** Requests ask for ``logprobs`` with ``TOP_LOGPROBS`` alternatives at temperature 0;
  the first position's label log-probs go into the record (see ``parse.decide_verdict``). An
  endpoint that rejects ``logprobs`` with HTTP 400 is asked again without them (text verdicts).
- **Accounting.** Requests, HTTP attempts (retries included), prompt/completion tokens as the
  server reports them, and the cost from :data:`PRICES_PER_1M_TOKENS`.
- **Budget guard.** :func:`estimate_run` / :func:`check_budget` (wired in as
  :func:`sso.judge.backends.make_budget_guard`): before the first request, the number of uncached
  requests and their cost (prompt tokens estimated as characters / 4 of the rendered messages,
  completion tokens at the ``MAX_TOKENS`` ceiling) are compared with ``max_requests`` /
  ``max_cost_usd``.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable, Iterable

from sso.clients import EndpointClient, UsageCounter, read_token_usage, run_bounded
from sso.config import ConfigError, JudgeConfig
from sso.judge.parse import collect_label_logprobs
from sso.judge.prompts import MAX_TOKENS, TOP_LOGPROBS, JudgeParts, render_judge_messages

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


def missing_key_error(message: str) -> ConfigError:
    """The error for a remote judge whose key variable is unset (the message names the variable)."""
    return ConfigError(f"[judge] backend = 'openai' with {message} (set it, or use backend = 'local')")


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


def estimate_run(todo: Iterable[list[dict[str, str]]], model: str) -> dict[str, Any]:
    """Requests, tokens and cost of asking every message list in ``todo`` once."""
    msgs = list(todo)
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
    prompt_tokens, completion_tokens = read_token_usage(completion)
    return {
        "text": text,
        "label_logprobs": label_logprobs,
        "forced": False,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "model": str(getattr(completion, "model", "") or ""),
        "finish_reason": str(getattr(choice, "finish_reason", "") or ""),
    }


USAGE_KEYS = ("requests", "http_attempts", "malformed_retries", "prompt_tokens", "completion_tokens")


class OpenAIJudge:
    """A :class:`~sso.judge.protocol.JudgeBackend` over an OpenAI-compatible endpoint.

    The key lives only in ``self.client`` (see the module docstring); the object prints without it
    and refuses to be pickled.
    """

    def __init__(self, jcfg: JudgeConfig, *, client: Any = None,
                 backoff_s: float = _BACKOFF_S, max_backoff_s: float = _MAX_BACKOFF_S):
        self.cfg = jcfg
        self.judge_id = f"openai:{jcfg.model}:t0:max{MAX_TOKENS}"
        self.client = EndpointClient(jcfg.base_url, jcfg.api_key_env, timeout_s=jcfg.timeout_s,
                                     max_retries=jcfg.max_retries, client=client,
                                     missing_key=missing_key_error)
        self.endpoint = self.client.endpoint
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._want_logprobs = True
        self._usage = UsageCounter(*USAGE_KEYS)

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.cfg.model!r}, endpoint={self.endpoint!r})"

    def __getstate__(self):
        raise TypeError("OpenAIJudge holds a client and is not picklable; store its results instead")

    def _sleep_backoff(self, attempt: int) -> None:
        delay = min(self._backoff_s * 2 ** (attempt - 1), self._max_backoff_s)
        time.sleep(delay * (1 - 0.25 * random.random()))

    def _ask(self, messages: list[dict[str, str]], logprobs: bool) -> dict[str, Any]:
        """One HTTP request (with the client's own retries) -> the raw record; counts attempts."""
        params: dict[str, Any] = {"model": self.cfg.model, "messages": messages,
                                  "temperature": 0.0, "max_tokens": MAX_TOKENS}
        if logprobs:
            params.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        raw = self.client.api.chat.completions.with_raw_response.create(**params)
        self._usage.add(http_attempts=1 + int(getattr(raw, "retries_taken", 0) or 0))
        return extract_record(raw.parse())

    def _api_error(self, exc: Exception, tries: int) -> JudgeError:
        """The JudgeError (key redacted) for an ``openai.APIStatusError`` or ``APIConnectionError``
        that ended a request for good, counting the request's HTTP attempts."""
        import openai

        where = f"judge endpoint {self.endpoint}"
        if isinstance(exc, openai.BadRequestError):
            cls, attempts, text = JudgeRequestError, 1, f"{where} rejected the request (HTTP 400): {exc}"
        elif isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            cls, attempts, text = JudgeRequestError, 1, (
                f"{where} refused the API key from the environment variable {self.cfg.api_key_env} "
                f"(HTTP {exc.status_code}): {exc}")
        elif isinstance(exc, openai.NotFoundError):
            cls, attempts, text = JudgeRequestError, 1, (
                f"{where} does not serve model {self.cfg.model!r} (HTTP 404): {exc}")
        elif isinstance(exc, openai.APIConnectionError):   # includes APITimeoutError
            kind = "timed out" if isinstance(exc, openai.APITimeoutError) else "unreachable"
            cls, attempts, text = JudgeUnavailableError, tries, (
                f"{where} {kind} after {tries} attempts (timeout {self.cfg.timeout_s:g} s each): "
                f"{type(exc).__name__}: {exc}. "
                f"Judgments received so far are cached; re-run or `resume` once it is back")
        else:   # any other HTTP status
            retryable = exc.status_code in (408, 409, 429) or exc.status_code >= 500
            cls = JudgeUnavailableError if retryable else JudgeRequestError
            attempts = tries if retryable else 1
            after = f" after {tries} attempts" if retryable else ""
            text = (f"{where} answered HTTP {exc.status_code}{after}: {exc}. "
                    f"Judgments received so far are cached; re-run or `resume` later")
        self._usage.add(http_attempts=attempts)
        return cls(self.client.redact(text))

    def complete(self, parts: JudgeParts) -> dict[str, Any]:
        """One judgment (raw record); retries per the module docstring, then raises a JudgeError."""
        import openai

        messages = render_judge_messages(*parts)
        tries = self.cfg.max_retries + 1
        malformed = 0
        while True:
            asked_logprobs = self._want_logprobs
            try:
                record = self._ask(messages, asked_logprobs)
            except openai.BadRequestError as exc:
                if asked_logprobs and "logprob" in str(exc).lower():
                    self._usage.add(http_attempts=1)
                    if self._want_logprobs:
                        log.warning("judge endpoint %s rejects logprobs; using text verdicts",
                                    self.endpoint)
                    self._want_logprobs = False
                    continue
                raise self._api_error(exc, tries) from None
            except (openai.APIResponseValidationError, ValueError) as exc:   # malformed 200 body
                malformed += 1
                self._usage.add(malformed_retries=1)
                if malformed >= tries:
                    raise JudgeUnavailableError(self.client.redact(
                        f"judge endpoint {self.endpoint} sent {malformed} malformed replies in a row "
                        f"({type(exc).__name__}: {exc})")) from None
                log.info("judge: malformed reply from %s (%s); retrying", self.endpoint,
                         type(exc).__name__)
                self._sleep_backoff(malformed)
                continue
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                raise self._api_error(exc, tries) from None
            self._usage.add(requests=1, prompt_tokens=record["prompt_tokens"],
                            completion_tokens=record["completion_tokens"])
            return record

    def complete_many(self, jobs: list[tuple[str, JudgeParts]],
                      on_done: Callable[[str, dict[str, Any]], None],
                      on_failed: Callable[[str, str], None] | None = None) -> None:
        """Judge every ``(key, parts)``; ``on_done(key, record)`` as each answer arrives.

        Without ``on_failed``: after the first request that fails for good no new one starts; the
        error is raised once the ones in flight have ended. With it: every request is tried and
        each one that fails for good is reported as ``on_failed(key, message)`` (key redacted)."""
        results, errors = run_bounded(self.complete, [parts for _, parts in jobs],
                                      max_concurrency=self.cfg.max_concurrency, catch=BaseException,
                                      stop_on_error=on_failed is None, thread_name_prefix="sso-judge",
                                      on_result=lambda i, record: on_done(jobs[i][0], record))
        if on_failed is not None:
            for (key, _), result in zip(jobs, results):
                if isinstance(result, BaseException):
                    on_failed(key, self.client.redact(f"{type(result).__name__}: {result}"))
            return
        if errors:
            first = errors[0]
            if isinstance(first, JudgeError):
                raise type(first)(f"{first} [{len(errors)} request(s) failed; "
                                  f"{self._usage.get('requests')} answered this run]") from None
            raise JudgeError(self.client.redact(
                f"judge request failed: {type(first).__name__}: {first}")) from None

    def usage(self) -> dict[str, Any]:
        u: dict[str, Any] = self._usage.snapshot()
        u["est_cost_usd"] = compute_cost_usd(self.cfg.model, u["prompt_tokens"], u["completion_tokens"])
        return u

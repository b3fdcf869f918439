"""Prompt rendering and tokenisation shared by sampling, log-prob scoring and judging.

The rule that keeps SSO's log-probs honest: the string a response was sampled from is exactly the
string it is scored under. Both come from :func:`render_prompt` (the tokenizer's own chat template)
and both tokenise with :func:`encode_prompt`. Responses are tokenised separately
(:func:`encode_response`) and concatenated to the prompt ids, so the prompt/response boundary
never shifts; a *finished* response (the model ended its turn) gets the end-of-turn token
appended, a response cut at ``max_new_tokens`` does not (the model never emitted it there).

The three prompts of SSO, all ending with the template's assistant header:

- ``x``  (the plain prompt): the query as the user turn, no principle. What the policy sees when
  deployed, and the prompt of DPO pairs, ``y_o`` and evaluation answers.
- ``x+`` / ``x-``: the same query steered by the good / bad principle. ``placement="system"``
  (as in the paper) makes the principle the system message; ``placement="user"`` keeps the
  template's own system handling and puts the principle at the top of the user turn
  (query, blank line, principle: the order measured to steer SmolLM2-135M), which small models
  follow much better.

Templates that insert a default system prompt when the conversation has none (SmolLM2, Qwen):
with placement "system" the principle *replaces* that default in x+ / x-, while x keeps the
template's default (exactly what the model sees when deployed); with placement "user" all three
prompts keep the default system prompt. ``x`` is the same string for both placements.

The end-of-turn token (:func:`end_of_turn_id`) is read from the chat template itself (Gemma
``<end_of_turn>``, Phi-3 ``<|end|>``, Llama-3 ``<|eot_id|>``, ChatML ``<|im_end|>``), not assumed
to be EOS; samplers stop there too (:func:`sso.generation.sampling.stop_token_ids`).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

log = logging.getLogger(__name__)

PLACEMENTS = ("system", "user")

#: assistant text rendered to find what the template writes after an assistant turn
_PROBE = "sso end of turn probe 7Q"


def build_messages(query: str, principle: str | None = None, *,
                   placement: str = "system") -> list[dict[str, str]]:
    """Chat messages for one query, the principle (if any) placed as ``placement`` says.

    ``"system"``: ``[system: principle, user: query]``; ``"user"``: ``[user: query + "\\n\\n" +
    principle]``; no principle: ``[user: query]`` for both.
    """
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-empty string")
    if placement not in PLACEMENTS:
        raise ValueError(f"principle placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if principle is None:
        return [{"role": "user", "content": query}]
    if not isinstance(principle, str) or not principle.strip():
        raise ValueError("principle (system message) must be a non-blank string when given")
    if placement == "user":
        return [{"role": "user", "content": f"{query}\n\n{principle}"}]
    return [{"role": "system", "content": principle}, {"role": "user", "content": query}]


def render_prompt(tokenizer, query: str, principle: str | None = None, *, placement: str = "system") -> str:
    """The model's chat template applied to :func:`build_messages`, ending with the assistant header."""
    return tokenizer.apply_chat_template(
        build_messages(query, principle, placement=placement), tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a rendered prompt (the template already holds any BOS text)."""
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class EndOfTurn:
    """The token that ends an assistant turn and where it came from.

    ``source``: ``"chat_template"`` (read from a rendered assistant turn) or ``"eos"`` (fallback;
    ``reason`` then says why the template gave no usable token).
    """

    token_id: int
    token: str
    source: str
    reason: str = ""


_EOT_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _is_added_token(tokenizer, token_id: int) -> bool:
    """True for special tokens and tokens added to the vocabulary (``<|im_end|>``, ``<end_of_turn>``)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return token_id in set(tokenizer.all_special_ids) or token_id in added


def _template_end_of_turn(tokenizer) -> tuple[int | None, str]:
    """(token id, "") read from the template, or (None, why not)."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as exc:   # no template, or one that refuses this conversation
        return None, f"rendering a user+assistant conversation failed ({type(exc).__name__}: {exc})"
    at = text.rfind(_PROBE)
    if at < 0:
        return None, "the rendered conversation does not contain the assistant message verbatim"
    suffix = text[at + len(_PROBE):].lstrip(" ")
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    if not ids:
        return None, "the template writes nothing after the assistant message"
    first = int(ids[0])
    if not _is_added_token(tokenizer, first):
        token = tokenizer.convert_ids_to_tokens(first)
        return None, f"the first token after the assistant message, {token!r}, is not a special/added token"
    return first, ""


def _compute_end_of_turn(tokenizer) -> EndOfTurn:
    token_id, reason = _template_end_of_turn(tokenizer)
    if token_id is not None:
        return EndOfTurn(token_id, tokenizer.convert_ids_to_tokens(token_id), "chat_template")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"cannot mark the end of a response: {reason}, and the tokenizer has no eos_token")
    log.warning("end-of-turn token: using EOS %r because %s", tokenizer.eos_token, reason)
    return EndOfTurn(int(eos), str(tokenizer.eos_token), "eos", reason)


def resolve_end_of_turn(tokenizer) -> EndOfTurn:
    """The end-of-turn token of ``tokenizer``'s chat template (cached per tokenizer and template).

    Renders ``[user: "Hi", assistant: probe]`` with ``apply_chat_template`` and takes the first token
    after the probe text (leading spaces skipped); it must be a special or added token. Otherwise
    (no template, nothing after the message, plain text there) EOS, with the reason logged and
    kept in :attr:`EndOfTurn.reason`. ValueError when that fallback has no EOS either.
    """
    key = (getattr(tokenizer, "chat_template", None), tokenizer.eos_token_id)
    try:
        cached = _EOT_CACHE.get(tokenizer)
    except TypeError:   # not weak-referenceable: compute every time
        return _compute_end_of_turn(tokenizer)
    if cached is not None and cached[0] == key:
        return cached[1]
    result = _compute_end_of_turn(tokenizer)
    _EOT_CACHE[tokenizer] = (key, result)
    return result


def end_of_turn_id(tokenizer) -> int:
    """The token id that ends an assistant turn (see :func:`resolve_end_of_turn`)."""
    return resolve_end_of_turn(tokenizer).token_id


def encode_response(tokenizer, text: str, *, finished: bool = True) -> list[int]:
    """Token ids of a response, followed by the end-of-turn token only when ``finished``.

    ``finished=False``: the response was cut at ``max_new_tokens`` (finish reason "length"); the
    model did not end its turn, so no end-of-turn token is scored.
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids + [end_of_turn_id(tokenizer)] if finished else ids


PROMPT_PRINCIPLES = {"x_plus": "good_principle", "x_minus": "bad_principle", "x_plain": None}


def carried_prompts(records, cfg, model_path: str, columns: tuple[str, ...]) -> list[list[str]]:
    """The rendered prompts a table of records carries (``x_plus``, ``x_minus``, ``x_plain``).

    Records from sampling carry them (rendered once, so a template that inserts the date cannot
    drift); for a table without a column, it is rendered now with the base model's tokenizer and
    ``[principles] placement`` (from ``prompt`` and the good / bad principle column).
    """
    if all(c in records for c in columns):
        return [list(records[c]) for c in columns]
    from sso.models.loading import load_tokenizer

    tok = load_tokenizer(model_path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    placement = cfg.principles.placement
    out = []
    for c in columns:
        if c in records:
            out.append(list(records[c]))
            continue
        col = PROMPT_PRINCIPLES[c]
        out.append([render_prompt(tok, r.prompt, getattr(r, col) if col else None, placement=placement)
                    for r in records.itertuples()])
    return out

"""Prompt rendering and tokenisation shared by sampling, log-prob scoring and judging.

The rule that keeps SSO's log-probs honest: the string a response was sampled from is exactly the
string it is scored under. Both come from :func:`render_prompt` (the tokenizer's own chat template,
principle in the system message), and both tokenise with :func:`encode_prompt`. Responses are
tokenised separately (:func:`encode_response`) and concatenated to the prompt ids, with the
end-of-turn token appended, so the prompt/response boundary never shifts.
"""

from __future__ import annotations


def build_messages(query: str, system: str | None = None) -> list[dict[str, str]]:
    """Chat messages for one query; the principle (if any) is the system message."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-empty string")
    messages = []
    if system is not None:
        if not system.strip():
            raise ValueError("system message (principle) must not be blank when given")
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": query})
    return messages


def render_prompt(tokenizer, query: str, system: str | None = None) -> str:
    """The model's chat template applied to (system, user), ending with the assistant header."""
    return tokenizer.apply_chat_template(
        build_messages(query, system), tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a rendered prompt (the template already holds any BOS text)."""
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn (EOS of chat models: <|im_end|>, <|eot_id|>, ...)."""
    eot = tokenizer.eos_token_id
    if eot is None:
        raise ValueError("tokenizer has no eos_token; cannot mark the end of a response")
    return int(eot)


def encode_response(tokenizer, response: str) -> list[int]:
    """Token ids of a response followed by the end-of-turn token."""
    return list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [end_of_turn_id(tokenizer)]

"""Chat templates other than the tiny ChatML one: end-of-turn tokens, default system prompts, BOS
text, dates, principle placement; and the real SmolLM2 tokenizer when its package is installed.

The tokenizers are the tiny model's BPE with extra special tokens and small hand-written Jinja
templates in the style of Gemma, Llama-3(.1) and SmolLM2/Qwen (built offline, in milliseconds).
"""

from __future__ import annotations

import datetime

import pytest

from sso.generation.chat import (build_messages, encode_prompt, encode_response, end_of_turn_id,
                                 render_prompt, resolve_end_of_turn)
from sso.generation.sampling import cut_at_stop, stop_token_ids

GEMMA = (  # turns end with <end_of_turn>, which is not EOS
    "{% for m in messages %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' + m['content'] "
    "+ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
DEFAULT_SYSTEM = (  # SmolLM2/Qwen style: a default system prompt when the conversation has none
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant named Tiny.<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = (  # BOS text from the template, <|eot_id|> ends a turn
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
DATED = (  # Llama-3.1 style: a system block with today's date, the principle after it
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\n"
    "{{ 'Today Date: ' + strftime_now('%d %b %Y') + '\n\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% set rest = messages[1:] %}"
    "{% else %}{% set rest = messages %}{% endif %}<|eot_id|>"
    "{% for m in rest %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
PLAIN_END = (  # assistant turns end with plain text: no end-of-turn token to read
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n### end\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")

GEMMA_TOKENS = ("<start_of_turn>", "<end_of_turn>")
LLAMA3_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def make_tokenizer(path: str, template: str | None, specials: tuple[str, ...] = (), *, bos_post: bool = False):
    """A fresh tiny tokenizer with ``specials`` added as special tokens and ``template`` as its
    chat template; ``bos_post``: tokenising with special tokens also prepends BOS (as Llama does)."""
    from tokenizers import processors

    from sso.models.loading import load_tokenizer

    tok = load_tokenizer(path)
    if specials:
        tok.add_tokens(list(specials), special_tokens=True)
    if bos_post:
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("template, specials, expected", [
    (GEMMA, GEMMA_TOKENS, "<end_of_turn>"),
    (LLAMA3, LLAMA3_TOKENS, "<|eot_id|>"),
    (DATED, LLAMA3_TOKENS, "<|eot_id|>"),
    (DEFAULT_SYSTEM, (), "<|im_end|>"),
])
def test_end_of_turn_is_read_from_the_template(tiny_model_path, template, specials, expected):
    tok = make_tokenizer(tiny_model_path, template, specials)
    eot = tok.convert_tokens_to_ids(expected)
    found = resolve_end_of_turn(tok)
    assert (found.token_id, found.token, found.source, found.reason) == (eot, expected, "chat_template", "")
    assert end_of_turn_id(tok) == eot
    ids = encode_response(tok, "Fine, thanks.")
    assert ids[-1] == eot and ids.count(eot) == 1
    assert encode_response(tok, "Fine, thanks.", finished=False) == ids[:-1]
    # both engines stop at the end-of-turn token (and still at EOS)
    stops = stop_token_ids(tok, None)
    assert eot in stops and tok.eos_token_id in stops
    body = tok("Fine", add_special_tokens=False)["input_ids"]
    done = cut_at_stop(tok, body + [eot, 7, 8], stops)
    assert (done.text, done.finish_reason, done.n_tokens) == ("Fine", "stop", len(body) + 1)


def test_end_of_turn_differs_from_eos_where_the_template_says_so(tiny_model_path):
    tok = make_tokenizer(tiny_model_path, GEMMA, GEMMA_TOKENS)
    assert tok.eos_token == "<|im_end|>" and end_of_turn_id(tok) != tok.eos_token_id
    assert tok.eos_token_id not in encode_response(tok, "Fine, thanks.")


def test_fallback_to_eos_says_why(tiny_model_path):
    tok = make_tokenizer(tiny_model_path, PLAIN_END)
    found = resolve_end_of_turn(tok)
    assert (found.token_id, found.source) == (tok.eos_token_id, "eos")
    assert "not a special/added token" in found.reason
    tok.chat_template = None
    found = resolve_end_of_turn(tok)
    assert found.source == "eos" and "rendering" in found.reason
    tok.eos_token = None
    with pytest.raises(ValueError, match="no eos_token"):
        end_of_turn_id(tok)


def test_end_of_turn_is_cached_per_tokenizer_and_template(tiny_model_path):
    tok = make_tokenizer(tiny_model_path, GEMMA, GEMMA_TOKENS + LLAMA3_TOKENS)
    first = resolve_end_of_turn(tok)
    assert resolve_end_of_turn(tok) is first
    tok.chat_template = LLAMA3                       # a new template is read again
    assert resolve_end_of_turn(tok).token == "<|eot_id|>"
    other = make_tokenizer(tiny_model_path, DEFAULT_SYSTEM)
    assert resolve_end_of_turn(other).token == "<|im_end|>"


def test_default_system_prompt_and_principle_placement(tiny_model_path):
    tok = make_tokenizer(tiny_model_path, DEFAULT_SYSTEM)
    default = "<|im_start|>system\nYou are a helpful assistant named Tiny.<|im_end|>\n"
    x = render_prompt(tok, "Name a colour.")
    assert x == default + "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(tok, "Name a colour.", placement="user") == x         # x does not depend on it
    # system placement: the principle replaces the default system prompt in x+
    x_plus = render_prompt(tok, "Name a colour.", "Answer in one word.")
    assert x_plus == ("<|im_start|>system\nAnswer in one word.<|im_end|>\n"
                      "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")
    assert "Tiny" not in x_plus
    # user placement: all prompts keep the default; the principle opens the user turn
    x_plus_user = render_prompt(tok, "Name a colour.", "Answer in one word.", placement="user")
    assert x_plus_user == (default + "<|im_start|>user\nName a colour.\n\nAnswer in one word.<|im_end|>\n"
                           "<|im_start|>assistant\n")


def test_user_placement_on_the_tiny_chatml_template(tiny_tokenizer):
    assert render_prompt(tiny_tokenizer, "Hi", "Be brief.", placement="user") == (
        "<|im_start|>user\nHi\n\nBe brief.<|im_end|>\n<|im_start|>assistant\n")
    assert build_messages("Hi", "Be brief.", placement="user") == [{"role": "user", "content": "Hi\n\nBe brief."}]
    with pytest.raises(ValueError, match="placement must be one of system, user"):
        render_prompt(tiny_tokenizer, "Hi", "Be brief.", placement="assistant")


def test_template_bos_text_is_not_doubled(tiny_model_path):
    tok = make_tokenizer(tiny_model_path, LLAMA3, LLAMA3_TOKENS, bos_post=True)
    prompt = render_prompt(tok, "Name a colour.", "Answer in one word.")
    assert prompt.startswith(tok.bos_token + "<|start_header_id|>system<|end_header_id|>\n\nAnswer in one word.")
    assert tok(prompt)["input_ids"][:2] == [tok.bos_token_id] * 2           # what a naive encode would do
    p_ids = encode_prompt(tok, prompt)
    assert p_ids.count(tok.bos_token_id) == 1 and p_ids[0] == tok.bos_token_id
    r_ids = encode_response(tok, "Blue.")
    assert tok.bos_token_id not in r_ids and r_ids[-1] == tok.convert_tokens_to_ids("<|eot_id|>")
    assert tok.decode(p_ids + r_ids) == prompt + "Blue.<|eot_id|>"


def test_dated_template_keeps_principle_and_end_of_turn(tiny_model_path):
    tok = make_tokenizer(tiny_model_path, DATED, LLAMA3_TOKENS)
    before = datetime.datetime.now().strftime("%d %b %Y")
    x = render_prompt(tok, "Name a colour.")
    x_plus = render_prompt(tok, "Name a colour.", "Answer in one word.")
    x_minus = render_prompt(tok, "Name a colour.", "Answer at great length.")
    after = datetime.datetime.now().strftime("%d %b %Y")
    assert any(f"Today Date: {d}\n\n" in x for d in {before, after})
    assert "Answer in one word.<|eot_id|>" in x_plus and "Answer at great length.<|eot_id|>" in x_minus
    assert x_plus.replace("Answer in one word.", "") == x_minus.replace("Answer at great length.", "") == x
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|eot_id|>")


def test_real_smollm2_end_of_turn_and_default_system_prompt():
    from sso.models.loading import load_tokenizer, resolve_model_path
    from sso.models.smollm2 import ModelPackageMissing

    try:
        path = resolve_model_path("smollm2-135m-instruct")
    except ModelPackageMissing as exc:
        pytest.skip(str(exc))
    tok = load_tokenizer(path)
    found = resolve_end_of_turn(tok)
    assert (found.token, found.source) == ("<|im_end|>", "chat_template")
    assert found.token_id in stop_token_ids(tok, None)
    default = "You are a helpful AI assistant named SmolLM"
    x = render_prompt(tok, "Why is the sky blue?")
    x_plus = render_prompt(tok, "Why is the sky blue?", "Answer in one short sentence.")
    assert default in x and default not in x_plus
    assert x_plus.startswith("<|im_start|>system\nAnswer in one short sentence.<|im_end|>\n")
    x_plus_user = render_prompt(tok, "Why is the sky blue?", "Answer in one short sentence.", placement="user")
    assert default in x_plus_user
    assert "<|im_start|>user\nWhy is the sky blue?\n\nAnswer in one short sentence.<|im_end|>" in x_plus_user

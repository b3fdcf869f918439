"""Batching and log-prob scoring on the tiny model: masks, truncation, padding, one forward pass."""

from __future__ import annotations

import pytest
import torch

from sso.generation.chat import encode_prompt, encode_response, end_of_turn_id, render_prompt
from scoring_helpers import build_batch
from sso.training.scoring import prompt_fits, sequence_logps, truncate_pair


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    return [render_prompt(tiny_tokenizer, "How does a for loop work?", "Be concise."),
            render_prompt(tiny_tokenizer, "Explain dictionaries."),
            render_prompt(tiny_tokenizer, "What is a generator expression in Python, in a few words?")]


pytestmark = pytest.mark.usefixtures("torch_single_thread")

RESPONSES = ["It repeats a block for each item.", "A dict maps keys to values.", "A lazy list."]


def _manual_logps(model, prompt_ids, response_ids):
    """Reference computation: full-vocabulary log-softmax over one unpadded sequence."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()                 # [T, V]
    logp = torch.log_softmax(logits[:-1], dim=-1)                       # predicts tokens 1..T-1
    targets = ids[0, 1:]
    token_logps = logp[torch.arange(len(targets)), targets]
    return token_logps[len(prompt_ids) - 1:].sum().item()               # response tokens only


def test_build_batch_layout(tiny_tokenizer, prompts):
    tok = tiny_tokenizer
    batch = build_batch(tok, prompts, RESPONSES, max_length=512)
    assert set(batch) == {"input_ids", "attention_mask", "loss_mask", "truncated"}
    assert not batch["truncated"].any()
    for i, (p, r) in enumerate(zip(prompts, RESPONSES)):
        p_ids, r_ids = encode_prompt(tok, p), encode_response(tok, r)
        n = len(p_ids) + len(r_ids)
        assert batch["input_ids"][i, :n].tolist() == p_ids + r_ids           # concatenated ids
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()          # right padding
        mask = batch["loss_mask"][i]
        assert mask[: len(p_ids)].sum() == 0                                 # prompt masked out
        assert mask.tolist()[len(p_ids): n] == [1] * len(r_ids)              # response + end-of-turn
        assert mask.sum() == len(r_ids) and mask[n:].sum() == 0
        assert batch["input_ids"][i, n - 1] == tok.eos_token_id               # last scored token: <|im_end|>


def test_changing_the_query_moves_no_response_position(tiny_tokenizer):
    tok = tiny_tokenizer
    a = render_prompt(tok, "Tell me about lists.")
    b = render_prompt(tok, "Tell me everything you know about Python lists and tuples, please.")
    batch = build_batch(tok, [a, b], ["Lists hold items."] * 2, max_length=512)
    resp_a = batch["input_ids"][0][batch["loss_mask"][0].bool()]
    resp_b = batch["input_ids"][1][batch["loss_mask"][1].bool()]
    assert resp_a.tolist() == resp_b.tolist() == encode_response(tok, "Lists hold items.")


def test_truncation_cuts_the_response_never_the_prompt():
    p, r = list(range(100, 110)), list(range(200, 220))                       # 10 + 20 tokens
    assert truncate_pair(p, r, 40) == (p, r, False)
    # response cut from the right down to what fits; the prompt (principle included) stays whole
    assert truncate_pair(p, r, 25) == (p, r[:15], True)
    assert truncate_pair(p, r, 13) == (p, r[:3], True)                       # 3 = 13 // 4 still fits
    assert prompt_fits(10, 20, 13) and not prompt_fits(10, 20, 12)
    assert prompt_fits(10, 1, 11) and not prompt_fits(10, 1, 10)
    # a prompt that leaves fewer than min(len(response), max_length // 4) tokens: refused, not cut
    with pytest.raises(ValueError, match=r"prompt of 10 tokens leaves 2 of max_length 12.*at least 3"):
        truncate_pair(p, r, 12)
    with pytest.raises(ValueError, match="max_length"):
        truncate_pair(p, [7], 10)
    with pytest.raises(ValueError, match="max_length"):
        truncate_pair(p, r, 1)


def test_build_batch_counts_truncations_and_keeps_whole_prompts(tiny_tokenizer, prompts):
    tok = tiny_tokenizer
    batch = build_batch(tok, prompts, ["word " * 200, "short", "also short"], max_length=48)
    assert batch["truncated"].tolist() == [True, False, False]
    assert batch["input_ids"].shape[1] == 48
    p_ids = encode_prompt(tok, prompts[0])                     # 32 tokens: 16 left for the response
    assert len(p_ids) == 32 and batch["loss_mask"][0].sum() == 48 - len(p_ids)
    assert batch["input_ids"][0, : len(p_ids)].tolist() == p_ids           # principle and all
    # a cut response is not finished: its last scored token is not the end-of-turn token
    assert batch["input_ids"][0, -1] != end_of_turn_id(tok)
    assert batch["input_ids"][0, 47].item() == encode_response(tok, "word " * 200)[15]
    with pytest.raises(ValueError, match=r"prompt of 32 tokens.*max_length 40"):
        build_batch(tok, prompts, ["word " * 200, "short", "also short"], max_length=40)


def test_capped_response_is_scored_without_end_of_turn(tiny_model, tiny_tokenizer, prompts):
    tok, eot = tiny_tokenizer, end_of_turn_id(tiny_tokenizer)
    text = RESPONSES[0]
    assert encode_response(tok, text, finished=False) == encode_response(tok, text)[:-1]
    batch = build_batch(tok, [prompts[0]] * 2, [text] * 2, max_length=512, finished=[True, False])
    done, capped = batch["loss_mask"].bool()
    assert batch["input_ids"][0][done][-1] == eot and eot not in batch["input_ids"][1][capped].tolist()
    assert done.sum() == capped.sum() + 1
    with torch.no_grad():
        logps, ntok = sequence_logps(tiny_model, batch)
    p_ids, r_ids = encode_prompt(tok, prompts[0]), encode_response(tok, text)
    assert logps[1].item() == pytest.approx(_manual_logps(tiny_model, p_ids, r_ids[:-1]), abs=1e-4)
    assert logps[0] < logps[1]                                 # the end-of-turn log-prob is no longer added
    assert ntok.tolist() == [len(r_ids), len(r_ids) - 1]
    with pytest.raises(ValueError, match="1 finished flags but 2 responses"):
        build_batch(tok, [prompts[0]] * 2, [text] * 2, max_length=512, finished=[True])


def test_sequence_logps_matches_manual_and_ignores_padding(tiny_model, tiny_tokenizer, prompts):
    tok = tiny_tokenizer
    batch = build_batch(tok, prompts, RESPONSES, max_length=512)
    with torch.no_grad():
        logps, ntok = sequence_logps(tiny_model, batch)
    assert logps.shape == (3,) and ntok.tolist() == [len(encode_response(tok, r)) for r in RESPONSES]
    for i, (p, r) in enumerate(zip(prompts, RESPONSES)):
        expected = _manual_logps(tiny_model, encode_prompt(tok, p), encode_response(tok, r))
        assert logps[i].item() == pytest.approx(expected, abs=1e-4)
        with torch.no_grad():                                                # alone, no padding
            alone, _ = sequence_logps(tiny_model, build_batch(tok, [p], [r], max_length=512))
        assert alone.item() == pytest.approx(logps[i].item(), abs=1e-4)


def test_sequence_logps_is_differentiable(tiny_model_path, tiny_tokenizer, prompts):
    from sso.models.loading import load_model

    model = load_model(tiny_model_path, dtype="float32", device="cpu")
    logps, _ = sequence_logps(model, build_batch(tiny_tokenizer, prompts[:2], RESPONSES[:2], 512))
    logps.sum().backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_head_only_on_response_positions_matches_full_forward(tiny_model_path, tiny_tokenizer, prompts):
    """The fast path (LM head on response positions only) equals the model's own full forward."""
    from sso.models.loading import load_model
    from sso.training.scoring import _head_split

    fast = load_model(tiny_model_path, dtype="float32", device="cpu")
    slow = load_model(tiny_model_path, dtype="float32", device="cpu")
    assert _head_split(fast) is not None                     # Llama: logits = lm_head(last hidden)
    slow.__dict__["_sso_head_split"] = None                  # force the full-forward fallback
    batch = build_batch(tiny_tokenizer, prompts, RESPONSES, max_length=512)
    with torch.no_grad():
        a, na = sequence_logps(fast, batch)
        b, nb = sequence_logps(slow, batch)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    assert na.tolist() == nb.tolist()

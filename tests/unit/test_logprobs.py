"""Chunked target-token log-probs equal the full log-softmax (values and gradients): random inputs, tiny model."""

from __future__ import annotations

import pytest
import torch

from sso.training.logprobs import chunked_token_logps, rows_per_chunk

pytestmark = pytest.mark.usefixtures("torch_single_thread")

V, H = 97, 24


def _inputs(n: int, *, bias: bool = True, dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=gen).to(dtype).requires_grad_()
    weight = (0.4 * torch.randn(V, H, generator=gen)).to(dtype).requires_grad_()
    b = torch.randn(V, generator=gen).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, V, (n,), generator=gen)
    grad_out = torch.randn(n, generator=gen)
    return hidden, weight, b, targets, grad_out


def _reference(hidden, weight, bias, targets):
    """The full-vocabulary computation: float32 logits [N, V], log-softmax, gather."""
    logits = hidden.float() @ weight.float().T + (0 if bias is None else bias.float())
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]


def _grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out)


@pytest.mark.parametrize("n,chunk", [(40, 8), (40, 40), (40, 7), (41, 1), (5, 1024), (1, 1), (1, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_equal_full_log_softmax(n, chunk, bias):
    hidden, weight, b, targets, grad_out = _inputs(n, bias=bias)
    params = (hidden, weight) + ((b,) if bias else ())
    out = chunked_token_logps(hidden, weight, targets, bias=b, chunk_size=chunk)
    ref = _reference(hidden, weight, b, targets)
    assert out.shape == (n,) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(_grads(out, params, grad_out), _grads(ref, params, grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_empty_input_gives_empty_output_and_zero_weight_grad():
    hidden, weight, b, targets, grad_out = _inputs(0)
    out = chunked_token_logps(hidden, weight, targets, bias=b, chunk_size=4)
    assert out.shape == (0,)
    g_h, g_w, g_b = _grads(out, (hidden, weight, b), grad_out)
    assert g_h.shape == (0, H) and torch.equal(g_w, torch.zeros(V, H)) and torch.equal(g_b, torch.zeros(V))


def test_frozen_weight_gets_no_grad_and_hidden_grad_is_exact():
    hidden, weight, b, targets, grad_out = _inputs(33)
    weight.requires_grad_(False)
    b.requires_grad_(False)
    out = chunked_token_logps(hidden, weight, targets, bias=b, chunk_size=10)
    out.backward(grad_out)
    assert weight.grad is None and b.grad is None
    (want,) = _grads(_reference(hidden, weight, b, targets), (hidden,), grad_out)
    torch.testing.assert_close(hidden.grad, want, rtol=1e-6, atol=1e-6)


def test_bfloat16_inputs_compute_in_float32_and_return_bfloat16_grads():
    hidden, weight, b, targets, grad_out = _inputs(50, dtype=torch.bfloat16)
    params = (hidden, weight, b)
    out = chunked_token_logps(hidden, weight, targets, bias=b, chunk_size=16)
    ref = _reference(hidden, weight, b, targets)                     # float32 from the same bf16 values
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    naive_logits = torch.nn.functional.linear(hidden, weight, b).float()     # bf16 matmul, as before
    naive = torch.log_softmax(naive_logits, -1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(out, naive, rtol=0, atol=0.1)         # bf16 logits: rounding only
    for got, want, p in zip(_grads(out, params, grad_out), _grads(ref, params, grad_out), params):
        assert got.dtype == torch.bfloat16 and got.shape == p.shape
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


def test_saves_no_vocabulary_sized_tensor_for_backward():
    """The full computation keeps [N, V] tensors for backward; the chunked one keeps inputs and [N] only."""
    n = 64
    hidden, weight, b, targets, _ = _inputs(n)

    def saved_sizes(fn):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            fn()
        return sizes

    assert n * V in saved_sizes(lambda: _reference(hidden, weight, b, targets))
    sizes = saved_sizes(lambda: chunked_token_logps(hidden, weight, targets, bias=b, chunk_size=8))
    assert max(sizes) == V * H and n * V not in sizes


@pytest.mark.parametrize("kwargs,match", [
    ({"hidden": torch.zeros(3, H + 1)}, "same H"),
    ({"hidden": torch.zeros(3, H, dtype=torch.long)}, "floating-point"),
    ({"targets": torch.zeros(2, dtype=torch.long)}, "targets"),
    ({"targets": torch.zeros(3, dtype=torch.int32)}, "torch.long"),
    ({"targets": torch.tensor([0, V, 1])}, r"\[0, V=97\)"),
    ({"targets": torch.tensor([0, -1, 1])}, r"\[0, V=97\)"),
    ({"bias": torch.zeros(V - 1)}, "bias"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"chunk_size": 2.0}, "chunk_size"),
])
def test_bad_inputs_raise_value_error(kwargs, match):
    args = {"hidden": torch.zeros(3, H), "weight": torch.zeros(V, H), "targets": torch.zeros(3, dtype=torch.long),
            "bias": None, "chunk_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        chunked_token_logps(args.pop("hidden"), args.pop("weight"), args.pop("targets"), **args)


def test_rows_per_chunk_respects_budget():
    assert rows_per_chunk(150_000) == 447                             # 256 MiB / (150k * 4 B)
    assert rows_per_chunk(1000, budget_bytes=4000 * 10 + 3) == 10
    assert rows_per_chunk(10**9) == 1
    with pytest.raises(ValueError, match="vocab_size"):
        rows_per_chunk(0)


# ---------------------------------------------------------------- wired into sequence_logps (tiny model)

RESPONSES = ["It repeats a block for each item.", "A dict maps keys to values.", "A lazy list."]


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    from sso.generation.chat import render_prompt
    from scoring_helpers import build_batch

    prompts = [render_prompt(tiny_tokenizer, "How does a for loop work?", "Be concise."),
               render_prompt(tiny_tokenizer, "Explain dictionaries."),
               render_prompt(tiny_tokenizer, "What is a generator expression in Python, in a few words?")]
    return build_batch(tiny_tokenizer, prompts, RESPONSES, max_length=512)


def _full_softmax_logps(model, batch):
    """Reference: the model's own full forward, float32 log-softmax over the vocabulary, summed per sequence."""
    scored = batch["loss_mask"][:, 1:].bool()                                     # [B, T-1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    token = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]   # [B, T-1]
    return (token * scored).sum(dim=-1)


@pytest.fixture
def count_chunked(monkeypatch):
    import sso.training.scoring as scoring

    calls = []
    real = scoring.chunked_token_logps
    monkeypatch.setattr(scoring, "chunked_token_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _lora_model(tiny_model_path, target_modules):
    from peft import LoraConfig, get_peft_model

    from sso.models.loading import load_model

    model = get_peft_model(load_model(tiny_model_path, dtype="float32", device="cpu"),
                           LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():                                       # a non-trivial adapter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _lora_b_grad(model, logps):
    lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n and "q_proj" in n)
    (grad,) = torch.autograd.grad(logps.sum(), lora_b)
    return grad


def test_sequence_logps_with_lora_matches_full_softmax_values_and_grads(tiny_model_path, batch, count_chunked):
    from sso.training.scoring import sequence_logps

    model = _lora_model(tiny_model_path, ["q_proj", "v_proj"])
    logps, ntok = sequence_logps(model, batch)
    assert count_chunked == [1]                                 # the chunked path was taken
    ref = _full_softmax_logps(model, batch)
    torch.testing.assert_close(logps, ref, rtol=1e-6, atol=1e-5)   # sums of ~20 log-probs
    assert ntok.tolist() == batch["loss_mask"].sum(-1).tolist()
    got, want = _lora_b_grad(model, logps), _lora_b_grad(model, ref)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_sequence_logps_tied_head_gradient_matches_full_softmax(tiny_model_path, batch, count_chunked):
    """Full fine-tuning, tied embeddings: the head's and the embedding's gradient contributions add up."""
    from sso.models.loading import load_model
    from sso.training.scoring import sequence_logps

    model = load_model(tiny_model_path, dtype="float32", device="cpu").eval()
    emb = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is emb
    logps, _ = sequence_logps(model, batch)
    assert count_chunked == [1]
    ref = _full_softmax_logps(model, batch)
    torch.testing.assert_close(logps, ref, rtol=1e-6, atol=1e-5)   # sums of ~20 log-probs
    (got,) = torch.autograd.grad(logps.sum(), emb)
    (want,) = torch.autograd.grad(ref.sum(), emb)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")
def test_lora_on_lm_head_falls_back_to_the_wrapped_head(tiny_model_path, batch, count_chunked):
    from sso.training.scoring import sequence_logps

    model = _lora_model(tiny_model_path, ["lm_head"])            # the only adapted module
    with torch.no_grad():
        logps, _ = sequence_logps(model, batch)
        ref = _full_softmax_logps(model, batch)
        with model.disable_adapter():
            base = _full_softmax_logps(model, batch)
    assert count_chunked == []                                  # a peft wrapper is not a plain nn.Linear
    torch.testing.assert_close(logps, ref, rtol=1e-6, atol=1e-5)   # sums of ~20 log-probs
    assert (logps - base).abs().max() > 1e-3                     # the head's adapter is applied

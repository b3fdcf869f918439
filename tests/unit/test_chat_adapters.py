"""Prompt rendering/tokenisation contract and adapter bytes round-trip."""

import pytest

from sso.training.adapters import read_adapter, write_adapter
from sso.generation.chat import build_messages, encode_prompt, encode_response, render_prompt


def test_principle_goes_in_the_system_message(tiny_tokenizer):
    rendered = render_prompt(tiny_tokenizer, "How do I boil an egg?", "Be helpful.")
    assert rendered.startswith("<|im_start|>system\nBe helpful.<|im_end|>\n<|im_start|>user\nHow do I boil an egg?")
    assert rendered.endswith("<|im_start|>assistant\n")
    assert "system" not in render_prompt(tiny_tokenizer, "How do I boil an egg?")


@pytest.mark.parametrize("query, system", [("", None), ("   ", None), (None, None), ("ok", "  ")])
def test_blank_inputs_are_rejected(query, system):
    with pytest.raises(ValueError):
        build_messages(query, system)


def test_prompt_and_response_ids_concatenate_without_shifting(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = render_prompt(tok, "Name three colours.")
    p_ids, r_ids = encode_prompt(tok, prompt), encode_response(tok, "Red, green and blue.")
    assert r_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(p_ids + r_ids) == prompt + "Red, green and blue.<|im_end|>"
    assert p_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # no BOS added on top of the template


def test_adapter_round_trip(tmp_path, tiny_model_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM
    import torch

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "a")
    files = read_adapter(tmp_path / "a")
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors"}
    out = write_adapter(files, tmp_path / "b")
    ids = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        want = model(ids).logits
        fresh = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
        got = PeftModel.from_pretrained(fresh, out)(ids).logits
    assert torch.equal(want, got)
    with pytest.raises(FileNotFoundError, match="missing adapter_config.json"):
        read_adapter(tmp_path)
    with pytest.raises(ValueError):
        write_adapter({"adapter_config.json": b"{}"}, tmp_path / "c")

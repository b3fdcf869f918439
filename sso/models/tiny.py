"""``sso-tiny``: a tiny random Llama with a real BPE tokenizer and a ChatML template, built offline.

It exists so that the whole pipeline (sampling, scoring, LoRA training, judging, vLLM) runs on a
laptop CPU and in CI with no model hub. It writes gibberish: tests assert on shapes, counts,
determinism and loss arithmetic, never on text quality.

- Tokenizer: byte-level BPE (vocab 4096) trained in well under a second on the English text of
  Python's reference docs (``pydoc_data.topics``, shipped with CPython), specials
  ``<|endoftext|> <|im_start|> <|im_end|> <|pad|>``, ChatML chat template, left padding.
- Model: ``LlamaForCausalLM``, hidden 256, 2 layers, 4 heads of dim 64 (a head size vLLM's CPU
  attention supports), 2 KV heads, tied embeddings: about 2.2 M parameters.

Building is seeded and deterministic: two builds give byte-identical files (a test checks this).
``ensure_tiny_model`` builds once per cache directory, atomically, so concurrent tasks are safe.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TINY_NAME = "sso-tiny"
TINY_VERSION = "1"   # bump when the recipe changes: the cache key includes it

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def _corpus():
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return [topics[k] for k in sorted(topics)]


def build_tiny_model(out_dir: str | os.PathLike, *, seed: int = 0, vocab_size: int = 4096) -> Path:
    """Build the tiny model + tokenizer into ``out_dir`` (created) and return its path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_corpus(), trainer)

    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"], padding_side="left", model_max_length=1024)
    tok.chat_template = CHATML_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # re-draw every weight from our own generator so the result does not depend on init order
        with torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                if param.dim() == 1:
                    param.fill_(1.0)   # norms
                else:
                    param.normal_(0.0, 0.02, generator=gen)
    model = model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def default_cache_dir() -> Path:
    root = os.environ.get("SSO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sso-flow")
    return Path(root)


def ensure_tiny_model(cache_dir: str | os.PathLike | None = None, *, seed: int = 0) -> Path:
    """Return the path of the tiny model, building it once (atomically) if it is not cached."""
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "models"
    target = root / f"{TINY_NAME}-v{TINY_VERSION}-seed{seed}"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        build_tiny_model(tmp, seed=seed)
        try:
            os.rename(tmp, target)          # atomic; loses the race gracefully below
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target

"""Test helper: the environment a vLLM engine needs in tests (scratch TMPDIR, small CPU KV cache)."""

import contextlib
import os
import tempfile

import pytest

KEYS = ("TMPDIR", "VLLM_CPU_KVCACHE_SPACE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK")


@contextlib.contextmanager
def vllm_environment(tmp_path_factory):
    """Set the variables (restored afterwards) and import vllm, skipping when it cannot load.

    vLLM leaves socket files in the temp dir: TMPDIR is a scratch dir (``SSO_VLLM_TMPDIR`` or a
    pytest temp dir)."""
    scratch = os.environ.get("SSO_VLLM_TMPDIR") or str(tmp_path_factory.mktemp("vllm-tmp"))
    saved = {k: os.environ.get(k) for k in KEYS}
    os.environ.update(TMPDIR=scratch, VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    tempfile.tempdir = None   # re-read TMPDIR
    try:
        try:
            import vllm  # noqa: F401
        except Exception as exc:   # e.g. CUDA-built torchvision beside a CPU torch
            pytest.skip(f"vllm is installed but cannot be imported: {type(exc).__name__}: {exc}")
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tempfile.tempdir = None


def hf_greedy_ids(hf, prompt_ids: list[int], max_new: int) -> list[int]:
    """Greedy ids from ``model.generate`` of a transformers sampler on one unpadded prompt, cut
    after the first stop id (what vLLM returns for the same prompt)."""
    import torch

    with torch.no_grad():
        out = hf.model.generate(input_ids=torch.tensor([prompt_ids]), do_sample=False,
                                max_new_tokens=max_new, eos_token_id=hf.stop_ids,
                                pad_token_id=hf.tokenizer.pad_token_id, temperature=None,
                                top_p=None, top_k=None)
    ids = out[0, len(prompt_ids):].tolist()
    stop = next((k for k, t in enumerate(ids) if t in hf.stop_ids), None)
    return ids if stop is None else ids[:stop + 1]

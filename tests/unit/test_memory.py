"""The per-GPU memory estimate (hand-computed on the Llama-3-8B shape) and the out-of-memory retry."""

from __future__ import annotations

import logging
import random

import pandas as pd
import pytest
import torch

import sso.training.trainer as trainer_mod
from sso.config import LoraConfig, ModelConfig, TrainConfig
from sso.generation.chat import render_prompt
from sso.training.distributed import DistInfo
from sso.training.memory import (check_fits, count_parameters, estimate_training_memory, format_memory_estimate,
                                 lora_parameters, model_shape, retry_split, split_micro_batches)
from sso.training.trainer import train_dpo

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LLAMA3_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256, "intermediate_size": 14336,
             "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False}
BF16_2K = ModelConfig(dtype="bfloat16", max_length=2048)
P_8B = 8_030_261_248      # Llama-3-8B's published parameter count


def test_parameter_counts_match_the_real_models(tiny_model_path, tiny_model):
    assert count_parameters(model_shape(LLAMA3_8B)) == P_8B
    shape = model_shape(tiny_model_path)                     # read from config.json
    assert count_parameters(shape) == sum(p.numel() for p in tiny_model.parameters())
    from peft import LoraConfig as PeftLora, get_peft_model
    from sso.models.loading import load_model

    lora = LoraConfig()
    peft_model = get_peft_model(load_model(tiny_model_path, device="cpu"), PeftLora(
        r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_parameters(shape, lora.r, lora.target_modules) == trainable
    with pytest.raises(ValueError, match="lm_head"):
        lora_parameters(shape, 8, ("q_proj", "lm_head"))


def test_8b_full_finetuning_zero3_on_8_gpus_by_hand():
    cfg = TrainConfig(finetuning="full", strategy="zero3", batch_size=8)
    est = estimate_training_memory(LLAMA3_8B, cfg, BF16_2K, n_gpus=8)
    assert est["weights"] == P_8B * 2 // 8 == 2_007_565_312
    assert est["grads"] == 2_007_565_312
    assert est["optimizer"] == P_8B * 12 // 8 == 12_045_391_872          # fp32 master + 2 moments
    assert est["tokens_per_gpu"] == 1 * 2 * 2048
    per_token_layer = 16 * 4096 + 2 * (6 * 4096 + 3 * 1024 + 4 * 14336)  # 235,520 bytes
    assert est["activations"] == 4096 * (32 * per_token_layer + 8 * 4096) == 31_004_295_168
    chunk = (2**28 // (4 * 128256)) * 128256 * 4                          # 523 rows of fp32 logits
    assert est["logits"] == chunk + 2 * 128256 * 4096 * 4 + 4096 * 4096 * 2 == 4_504_558_592
    assert est["total"] == sum(est[k] for k in ("weights", "grads", "optimizer", "activations", "logits"))
    assert check_fits(est, 80) is None                                   # 48.0 GiB of 80
    ckpt = estimate_training_memory(LLAMA3_8B, TrainConfig(finetuning="full", strategy="zero3", batch_size=8,
                                                           gradient_checkpointing=True), BF16_2K, n_gpus=8)
    assert ckpt["activations"] == 4096 * (32 * 2 * 4096 + per_token_layer + 8 * 4096)
    assert "48.0 GiB" in format_memory_estimate(est) and "zero3 on 8 GPU(s)" in format_memory_estimate(est)


def test_8b_lora_and_unsharded_full_finetuning():
    lora = TrainConfig(batch_size=2, lora=LoraConfig(r=16))              # q, k, v, o
    est = estimate_training_memory(LLAMA3_8B, lora, BF16_2K, n_gpus=1, strategy="ddp")
    n_lora = 32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024))
    assert est["trainable_parameters"] == n_lora == 13_631_488
    assert est["weights"] == P_8B * 2 + n_lora * 4 and est["grads"] == n_lora * 4
    assert est["optimizer"] == n_lora * 8
    assert est["logits"] == (2**28 // (4 * 128256)) * 128256 * 4 + 128256 * 4096 * 4 + 2 * 2 * 2048 * 4096 * 2
    full = estimate_training_memory(LLAMA3_8B, TrainConfig(finetuning="full", batch_size=8), BF16_2K, n_gpus=8)
    assert full["weights"] == P_8B * 2 and full["optimizer"] == P_8B * 4   # ddp: nothing sharded
    warning = check_fits(full, 80)
    assert warning and "zero3" in warning and "80.0 GiB" in warning
    zero2 = estimate_training_memory(LLAMA3_8B, TrainConfig(finetuning="full", batch_size=8), BF16_2K, 8, "zero2")
    assert zero2["weights"] == P_8B * 2 and zero2["grads"] == P_8B * 2 // 8


def test_the_trainer_prints_its_estimate_before_training(tiny_model_path, pairs, capsys):
    c = TrainConfig(batch_size=4, max_steps=1)
    res = train_dpo(tiny_model_path, pairs, c, ModelConfig(device="cpu", max_length=96), seed=0, progress=False)
    est = estimate_training_memory(tiny_model_path, c, ModelConfig(dtype="float32", max_length=96))
    assert res.summary["memory_estimate_gib"] == pytest.approx(est["total"] / 2**30)
    assert format_memory_estimate(est) in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Out of memory: half the micro-batch, twice the accumulation, the same step
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(tiny_tokenizer) -> pd.DataFrame:
    rng = random.Random(2)
    vocab = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()

    def words(lo, hi):
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    return pd.DataFrame([{"query_id": f"q{i}", "prompt_text": render_prompt(tiny_tokenizer, words(3, 6)),
                          "chosen": words(4, 12), "rejected": words(4, 12)} for i in range(12)])


def test_split_micro_batches_keeps_rows_and_order():
    mbs = [[5, 1, 4, 2, 3], [0, 6]]
    assert split_micro_batches(mbs, 1) == mbs
    assert split_micro_batches(mbs, 2) == [[5, 1, 4], [2, 3], [0], [6]]
    assert split_micro_batches(mbs, 8) == [[5], [1], [4], [2], [3], [0], [6]]
    assert retry_split([[1]], 4, DistInfo()) is None                     # nothing left to halve
    assert retry_split([[1, 2, 3]], 1, DistInfo(0, 2)) == 2              # distributed: the job restarts with it
    assert retry_split([[1, 2]], 1, DistInfo(0, 2)) is None              # one row per rank already
    assert retry_split([[1, 2]], 1, DistInfo()) == 2


def test_out_of_memory_retries_the_step_with_half_micro_batches(tiny_model_path, pairs, monkeypatch, caplog):
    c = TrainConfig(learning_rate=1e-2, batch_size=4, max_steps=3, warmup_ratio=0.0)
    mcfg = ModelConfig(device="cpu", max_length=96)
    plain = train_dpo(tiny_model_path, pairs, c, mcfg, seed=0, progress=False)
    real, seen = trainer_mod.sequence_logps, []

    def flaky(model, batch):                  # runs out of memory once, on more than 2 pairs
        rows = batch["input_ids"].shape[0]
        seen.append(rows)
        if rows > 4 and not any(r == -1 for r in seen):
            seen.append(-1)
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(model, batch)

    monkeypatch.setattr(trainer_mod, "sequence_logps", flaky)
    with caplog.at_level(logging.WARNING, logger="sso.training"):
        retried = train_dpo(tiny_model_path, pairs, c, mcfg, seed=0, progress=False)
    assert "out of memory at micro-batch 4: retrying with 2 x 2 accumulation" in caplog.text
    assert seen == [8, -1] + [4] * 6             # then every step in two halves of 2 pairs
    a, b = plain.history["loss"].tolist(), retried.history["loss"].tolist()
    print("loss without OOM:", a, "\nloss with OOM at step 1:", b)
    # the step that ran out of memory: the same rows, the same loss and gradient
    assert b[0] == pytest.approx(a[0], rel=1e-6)
    assert retried.history["grad_norm"].iloc[0] == pytest.approx(plain.history["grad_norm"].iloc[0], rel=1e-6)
    # later steps: Adam's first steps magnify float-rounding differences of near-zero gradients,
    # by how much depends on the CPU's kernels (2.1e-4 at the third step on an AMD EPYC)
    assert b == pytest.approx(a, rel=1e-3) and abs(a[-1] - a[0]) > 1e-2      # and the steps did learn


def test_out_of_memory_on_single_rows_is_raised(tiny_model_path, pairs, monkeypatch):
    def oom(model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(trainer_mod, "sequence_logps", oom)
    with pytest.raises(torch.OutOfMemoryError):
        train_dpo(tiny_model_path, pairs, TrainConfig(batch_size=2, max_steps=1), ModelConfig(device="cpu", max_length=96),
                  seed=0, progress=False)


#: injected into rank 0 of a torchrun job (sitecustomize runs before anything else): out of memory
#: when its training forward gets more than 2 sequences (its 2-row slice of a 4-row micro-batch x 2),
#: from the forward numbered SSO_TEST_OOM_FROM on (1: the first)
OOM_ON_RANK0 = '''
import os
if os.environ.get("RANK") == "0":
    import torch
    import sso.training.distributed as d
    real, calls = d.sequence_logps, []
    def flaky(model, batch):
        calls.append(1)
        if batch["input_ids"].shape[0] > 2 and len(calls) >= int(os.environ["SSO_TEST_OOM_FROM"]):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(model, batch)
    d.sequence_logps = flaky
'''


@pytest.mark.parametrize("oom_from, checkpoint", [(1, False), (3, True)])
def test_out_of_memory_under_torchrun_restarts_the_job_with_half_micro_batches(tiny_model_path, pairs, tmp_path,
                                                                                caplog, oom_from, checkpoint):
    import os

    from sso.training.launch import free_port, make_job, torchrun_job

    c = TrainConfig(learning_rate=1e-2, batch_size=4, max_steps=3, warmup_ratio=0.0, log_every=1, checkpoint_every=1)
    mcfg = ModelConfig(device="cpu", dtype="float32", max_length=96)
    job = lambda d: make_job("dpo", pairs, c, mcfg, tiny_model_path, 0, checkpoint_dir=str(d) if checkpoint else None)  # noqa: E731
    plain = torchrun_job(job(tmp_path / "plain"), 2, master_port=free_port(), timeout_s=300)
    (tmp_path / "sitecustomize.py").write_text(OOM_ON_RANK0)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    with caplog.at_level(logging.WARNING, logger="sso.training"):
        restarted = torchrun_job(job(tmp_path / "oom"), 2, master_port=free_port(), timeout_s=300,
                                 env={"PYTHONPATH": path, "SSO_TEST_OOM_FROM": str(oom_from)})
    assert "out of memory under torchrun; restarting the job with every micro-batch in 2 pieces" in caplog.text
    assert restarted.summary["oom_restarts"] == 1 and restarted.summary["micro_split"] == 2
    assert plain.summary["micro_split"] == 1 and "oom_restarts" not in plain.summary
    if checkpoint:      # the third step ran out of memory: the restart resumes after the second
        assert restarted.summary["resumed_from_step"] == 2 and restarted.summary["steps_run"] == 1
    a, b = plain.history["loss"].tolist(), restarted.history["loss"].tolist()
    print("2 processes:", a, "\nrestarted after OOM, micro-batches in 2:", b)
    assert len(b) == 3 and b[0] == pytest.approx(a[0], rel=1e-6)          # the same rows, in more passes
    assert b == pytest.approx(a, rel=1e-3) and abs(a[-1] - a[0]) > 1e-2

"""``strategy = "fsdp"`` (PyTorch FSDP2, sso.training.sharding) on 2 gloo processes under torchrun,
against the one-process run of the same data: loss curves, exports that reload, and a resumed run
that continues from a checkpoint gathered from the shards."""

from __future__ import annotations

import random
import socket

import pandas as pd
import pytest

from sso.config import ModelConfig, TrainConfig
from sso.generation.chat import render_prompt
from sso.training.launch import make_job, torchrun_job
from sso.training.policy import write_model_files
from sso.training.probe import compute_logits_probe, probe_matches
from sso.training.trainer import train_dpo

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MODEL_CFG = ModelConfig(name="sso-tiny", dtype="float32", device="cpu", max_length=96)


def cfg(**kw) -> TrainConfig:
    base = dict(learning_rate=5e-3, epochs=1, batch_size=4, warmup_ratio=0.0, log_every=1, strategy="fsdp")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pairs(tiny_tokenizer) -> pd.DataFrame:
    """11 rows: optimizer steps of 4, 4 and 3 rows (rank 1 holds 1 row of the last micro-batch)."""
    import pydoc_data.topics

    vocab = sorted(set(" ".join(pydoc_data.topics.topics.values()).split()))[1000:4000]
    rng = random.Random(7)

    def words(lo, hi):
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    return pd.DataFrame([{"query_id": f"q{i}", "prompt_text": render_prompt(tiny_tokenizer, words(3, 6)),
                          "chosen": words(4, 12), "rejected": words(4, 12)} for i in range(11)])


def _torchrun(tiny_model_path, pairs, c, **options):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = make_job("dpo", pairs, c, MODEL_CFG, tiny_model_path, 0, **options)
    return torchrun_job(job, 2, rank_outputs=True, master_port=port, timeout_s=300)


def _losses(result) -> list[float]:
    return result.history["loss"].tolist()


def check_export(main, single, finetuning: str, tiny_model_path, tmp_path) -> None:
    """Rank 0's export reloads (full model directory, or LoRA adapter on the base) to the logits
    probe rank 0 measured, and is close to the one-process run's model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sso.models.loading import load_model

    if finetuning == "full":
        model = AutoModelForCausalLM.from_pretrained(str(write_model_files(main.adapter, tmp_path / "m")))
    else:
        (tmp_path / "a").mkdir()
        for name, data in main.adapter.items():
            (tmp_path / "a" / name).write_bytes(data)
        model = PeftModel.from_pretrained(load_model(tiny_model_path, dtype="float32", device="cpu"), str(tmp_path / "a"))
    assert probe_matches(main.summary["logits_probe"], compute_logits_probe(model))     # what was exported
    # against one process: Adam's 1/sqrt(v) lets float-noise gradients step differently (see
    # test_distributed.py), which the signed logit sum amplifies; the absolute sum and top logits agree
    probe, one = compute_logits_probe(model), single.summary["logits_probe"]
    assert probe["abs_sum"] == pytest.approx(one["abs_sum"], rel=1e-5)
    assert probe["top_logits"] == pytest.approx(one["top_logits"], rel=1e-4) and probe["top_ids"] == one["top_ids"]


@pytest.mark.parametrize("finetuning, lr, grad_ckpt", [("lora", 5e-3, True), ("full", 1e-3, False)])
def test_fsdp_on_two_processes_gives_the_one_process_curve_and_an_export_that_reloads(
        tiny_model_path, pairs, tmp_path, finetuning, lr, grad_ckpt):
    c = cfg(finetuning=finetuning, learning_rate=lr, grad_accum=2, batch_size=2,   # accumulation too
            gradient_checkpointing=grad_ckpt)
    single = train_dpo(tiny_model_path, pairs, c, MODEL_CFG, seed=0, progress=False)
    main, other = _torchrun(tiny_model_path, pairs, c)
    print(finetuning, "loss, 1 process:", _losses(single), "\n2 processes (fsdp):", _losses(main))
    assert len(_losses(main)) == 3
    assert _losses(main) == pytest.approx(_losses(single), rel=1e-5)
    assert main.history["grad_norm"].tolist() == pytest.approx(single.history["grad_norm"].tolist(), rel=1e-4)
    assert not _losses(single)[-1] == pytest.approx(_losses(single)[0], rel=1e-4)      # it trained
    assert main.summary["world_size"] == 2 and other.summary == {"rank": 1, "exported": False}
    check_export(main, single, finetuning, tiny_model_path, tmp_path)


def test_fsdp_resumes_from_the_checkpoint_its_shards_were_gathered_into(tiny_model_path, pairs, tmp_path):
    import torch

    c = cfg(finetuning="full", learning_rate=1e-3, checkpoint_every=2)
    first, _ = _torchrun(tiny_model_path, pairs, c, checkpoint_dir=str(tmp_path))
    (state,) = [p for d in tmp_path.iterdir() if not d.name.startswith(".") for p in d.glob("step-*/state.pt")]
    ckpt = torch.load(state, weights_only=True)
    assert ckpt["step"] == 2 and "model.embed_tokens.weight" in ckpt["trainable"]
    assert ckpt["trainable"]["model.embed_tokens.weight"].shape[0] > 100          # whole, not a shard
    again, _ = _torchrun(tiny_model_path, pairs, c, checkpoint_dir=str(tmp_path))
    assert again.summary["resumed_from_step"] == 2 and again.summary["steps_run"] == 1
    assert _losses(again) == pytest.approx(_losses(first), rel=1e-6)
    assert probe_matches(first.summary["logits_probe"], again.summary["logits_probe"], rtol=1e-5)

"""Full fine-tuning and data-parallel training (torchrun, 2 gloo processes on CPU) on the tiny model."""

from __future__ import annotations

import math
import random
import socket

import pandas as pd
import pytest
import torch

import sso.training.trainer as trainer_mod
from sso.config import ModelConfig, TrainConfig
from sso.generation.chat import render_prompt
from sso.training.distributed import DistInfo, rank_slice, torchrun_command
from sso.training.launch import make_job, torchrun_job
from sso.training.objectives import DPO_OBJECTIVE
from sso.training.policy import is_full_model, reference_context, write_model_files
from sso.training.probe import compute_logits_probe
from sso.training.trainer import train_dpo

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MODEL_CFG = ModelConfig(name="sso-tiny", dtype="float32", device="cpu", max_length=96)
#: 13 rows in micro-batches of 4: steps of 4, 4, 4 and 1 row (rank 1's slice of the last is empty)
N_ROWS = 13


def cfg(**kw) -> TrainConfig:
    base = dict(learning_rate=5e-3, epochs=1, batch_size=4, warmup_ratio=0.0, log_every=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pairs(tiny_tokenizer) -> pd.DataFrame:
    import pydoc_data.topics

    vocab = sorted(set(" ".join(pydoc_data.topics.topics.values()).split()))[:3000]
    rng = random.Random(1)

    def words(lo, hi):
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    return pd.DataFrame([{"query_id": f"q{i}", "prompt_text": render_prompt(tiny_tokenizer, words(3, 6)),
                          "chosen": words(4, 12), "rejected": words(4, 12)} for i in range(N_ROWS)])


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_curve(single, dist, rel=1e-5):
    a, b = single.history["loss"].tolist(), dist.history["loss"].tolist()
    print("loss, 1 process:", a, "\nloss, 2 processes:", b)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert y == pytest.approx(x, rel=rel), (a, b)


# ---------------------------------------------------------------------------------------------
# Helpers: rank slices, strategies, the torchrun command
# ---------------------------------------------------------------------------------------------


def test_rank_slices_partition_every_micro_batch():
    idx = [7, 3, 9, 1, 5]
    for world in (1, 2, 3, 8):
        parts = [rank_slice(idx, DistInfo(r, world)) for r in range(world)]
        assert sum(parts, []) == idx
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_torchrun_command_multi_node():
    cmd = torchrun_command(8, ["--input", "j.pkl"], nnodes=2, node_rank=1, master_addr="10.0.0.1",
                           master_port=1234, python="py")
    assert cmd[:3] == ["py", "-m", "torch.distributed.run"]
    assert {"--nproc_per_node=8", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1",
            "--master_port=1234"} <= set(cmd)
    assert cmd[-4:] == ["-m", "sso.training.launch", "--input", "j.pkl"]
    with pytest.raises(ValueError):
        torchrun_command(2, nnodes=2, node_rank=2)


# ---------------------------------------------------------------------------------------------
# Full fine-tuning (one process)
# ---------------------------------------------------------------------------------------------


def test_full_finetuning_trains_every_weight_from_the_untouched_reference(tiny_model_path, pairs):
    c = cfg(finetuning="full", learning_rate=1e-3)
    run, _ = trainer_mod.prepare_run(DPO_OBJECTIVE, tiny_model_path, pairs, c, MODEL_CFG, 0, None)
    assert not hasattr(run.model, "peft_config")
    with reference_context(run.model, False):     # no adapter to disable: a no-op
        pass
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    assert all(p.requires_grad for p in run.model.parameters())
    opt, sched = trainer_mod.make_optimizer(run.model, c, total_steps=2)
    run.model.train()
    rec = trainer_mod.optimizer_step(run, opt, sched, [[0, 1, 2, 3]])
    assert rec["loss"] == pytest.approx(math.log(2), abs=1e-6)   # reference = the model before step 1
    for name, p in run.model.named_parameters():
        assert not torch.equal(p.detach(), before[name]), name


def test_full_export_reloads_and_continues_as_its_own_reference(tiny_model_path, pairs, tmp_path):
    from transformers import AutoModelForCausalLM

    c = cfg(finetuning="full", learning_rate=1e-3, max_steps=3)
    res = train_dpo(tiny_model_path, pairs, c, MODEL_CFG, seed=0, progress=False)
    assert is_full_model(res.adapter) and {"config.json", "model.safetensors"} <= set(res.adapter)
    model = AutoModelForCausalLM.from_pretrained(str(write_model_files(res.adapter, tmp_path / "m")))
    probe = compute_logits_probe(model)
    assert probe["sum"] == pytest.approx(res.summary["logits_probe"]["sum"], rel=1e-6)
    assert probe["top_logits"] == pytest.approx(res.summary["logits_probe"]["top_logits"], rel=1e-6)
    again = train_dpo(tiny_model_path, pairs, cfg(finetuning="full", learning_rate=1e-3, max_steps=1),
                      MODEL_CFG, seed=1, init_adapter=res.adapter, progress=False)
    assert again.history["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-6)
    assert again.summary["onpolicy_chosen"] != pytest.approx(res.summary["onpolicy_chosen"], rel=1e-4)
    with pytest.raises(ValueError, match="full model"):
        train_dpo(tiny_model_path, pairs, cfg(max_steps=1), MODEL_CFG, seed=1, init_adapter=res.adapter,
                  progress=False)


def test_full_finetuning_resumes_from_a_checkpoint(tiny_model_path, pairs, tmp_path, monkeypatch):
    c = cfg(finetuning="full", learning_rate=1e-3, max_steps=4, checkpoint_every=2)
    straight = train_dpo(tiny_model_path, pairs, c, MODEL_CFG, seed=2, progress=False)
    real_step, calls = trainer_mod.optimizer_step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "optimizer_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(tiny_model_path, pairs, c, MODEL_CFG, seed=2, checkpoint_dir=str(tmp_path), progress=False)
    monkeypatch.setattr(trainer_mod, "optimizer_step", real_step)
    (step_dir,) = [p for d in tmp_path.iterdir() if not d.name.startswith(".") for p in d.glob("step-*")]
    assert not (step_dir / "adapter").exists()       # a full model's weights live in state.pt
    resumed = train_dpo(tiny_model_path, pairs, c, MODEL_CFG, seed=2, checkpoint_dir=str(tmp_path), progress=False)
    assert resumed.summary["resumed_from_step"] == 2
    assert resumed.history["loss"].tolist() == straight.history["loss"].tolist()
    assert resumed.adapter["model.safetensors"] == straight.adapter["model.safetensors"]


# ---------------------------------------------------------------------------------------------
# torchrun, 2 processes: the same loss curve as one process
# ---------------------------------------------------------------------------------------------


def _torchrun(tiny_model_path, pairs, c, seed):
    job = make_job("dpo", pairs, c, MODEL_CFG, tiny_model_path, seed)
    return torchrun_job(job, 2, rank_outputs=True, master_port=_port(), timeout_s=120)


@pytest.mark.parametrize("batch_size, grad_accum", [(4, 1), (2, 2)])
def test_two_process_lora_dpo_matches_one_process(tiny_model_path, pairs, batch_size, grad_accum):
    c = cfg(batch_size=batch_size, grad_accum=grad_accum)     # 4 steps of 4, 4, 4, 1 rows either way
    single = train_dpo(tiny_model_path, pairs, c, MODEL_CFG, seed=0, progress=False)
    main, other = _torchrun(tiny_model_path, pairs, c, 0)
    _assert_same_curve(single, main)
    assert main.summary["world_size"] == 2 and other.summary == {"rank": 1, "exported": False}
    assert other.adapter == {}
    pd.testing.assert_frame_equal(main.history.drop(columns=["tokens_per_s"]),
                                  other.history.drop(columns=["tokens_per_s"]), check_exact=True)
    for key in ("grad_norm", "accuracy"):
        assert main.history[key].tolist() == pytest.approx(single.history[key].tolist(), rel=1e-5)
    assert main.summary["tokens"] == single.summary["tokens"]


def test_two_process_full_finetuning_matches_and_its_export_reloads(tiny_model_path, pairs, tmp_path):
    from safetensors.torch import load as load_safetensors
    from transformers import AutoModelForCausalLM

    c = cfg(finetuning="full", learning_rate=1e-3)
    single = train_dpo(tiny_model_path, pairs, c, MODEL_CFG, seed=0, progress=False)
    main, _ = _torchrun(tiny_model_path, pairs, c, 0)
    _assert_same_curve(single, main)
    model = AutoModelForCausalLM.from_pretrained(str(write_model_files(main.adapter, tmp_path / "ddp")))
    probe = compute_logits_probe(model)     # the rank-0 summary's probe is of the in-memory model
    assert probe["sum"] == pytest.approx(main.summary["logits_probe"]["sum"], rel=1e-6)
    assert probe["top_logits"] == pytest.approx(main.summary["logits_probe"]["top_logits"], rel=1e-6)
    print("probe abs_sum / top logits, 2 processes:", probe["abs_sum"], probe["top_logits"],
          "\n1 process:", single.summary["logits_probe"]["abs_sum"], single.summary["logits_probe"]["top_logits"])
    assert probe["abs_sum"] == pytest.approx(single.summary["logits_probe"]["abs_sum"], rel=1e-5)
    assert probe["top_logits"] == pytest.approx(single.summary["logits_probe"]["top_logits"], rel=1e-4)
    # Adam divides by sqrt(v): an element whose gradient is float noise may step differently, by
    # at most about lr per step; everything else agrees to float precision
    a, b = load_safetensors(main.adapter["model.safetensors"]), load_safetensors(single.adapter["model.safetensors"])
    assert a.keys() == b.keys()
    for name in a:
        diff = (a[name] - b[name]).abs()
        assert float(diff.max()) < 0.1 * c.learning_rate and float(diff.mean()) < 1e-7, name

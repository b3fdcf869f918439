"""The LoRA trainer on the tiny model: validation, reference, parameters, accuracy, checkpoints, TRL."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest
import torch

import sso.training.trainer as trainer_mod
import sso.training.checkpoints as checkpoints_mod
from sso.training.adapters import read_adapter  # noqa: F401  (documents the adapter contract)
from sso.generation.chat import render_prompt
from sso.config import LoraConfig, ModelConfig, TrainConfig
from sso.training.objectives import SSO_OBJECTIVE
from sso.training.schedule import build_schedule
from sso.training.trainer import TrainResult, optimizer_step, train_dpo, train_sso

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MODEL_CFG = ModelConfig(name="sso-tiny", dtype="float32", device="cpu", max_length=128)

#: The tiny-model generator settings that reach >= 0.9 pair accuracy on 32 random-text triples.
SSO_FIT = dict(learning_rate=5e-3, epochs=3, batch_size=8)


def cfg(**kw) -> TrainConfig:
    base = dict(learning_rate=5e-3, epochs=1, batch_size=4, warmup_ratio=0.0, log_every=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def triples(tiny_tokenizer) -> pd.DataFrame:
    """32 SSO triples of random words from Python's docs (the tiny model writes gibberish anyway)."""
    import pydoc_data.topics

    vocab = sorted(set(" ".join(pydoc_data.topics.topics.values()).split()))[:5000]
    rng = random.Random(0)

    def words(lo, hi):
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    rows = []
    for i in range(32):
        query = words(3, 6)
        rows.append({
            "query_id": f"q{i}",
            "x_plus": render_prompt(tiny_tokenizer, query, "Good: " + words(2, 5)),
            "x_minus": render_prompt(tiny_tokenizer, query, "Bad: " + words(2, 5)),
            "prompt_text": render_prompt(tiny_tokenizer, query),
            "y_plus": words(4, 10), "y_minus": words(4, 10), "y_o": words(4, 10),
        })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def pairs(triples) -> pd.DataFrame:
    return pd.DataFrame({"query_id": triples["query_id"], "prompt_text": triples["prompt_text"],
                         "chosen": triples["y_plus"], "rejected": triples["y_minus"]})


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def test_invalid_tables_are_rejected_by_name(tiny_model_path, pairs, triples):
    with pytest.raises(ValueError, match="pairs is empty"):
        train_dpo(tiny_model_path, pairs.iloc[:0], cfg(), MODEL_CFG, seed=0)
    with pytest.raises(ValueError, match="missing column.*rejected"):
        train_dpo(tiny_model_path, pairs.drop(columns=["rejected"]), cfg(), MODEL_CFG, seed=0)
    bad = pairs.copy()
    bad.loc[3, "chosen"] = "   "
    with pytest.raises(ValueError, match=r"column 'chosen' row 3 \(query_id q3\)"):
        train_dpo(tiny_model_path, bad, cfg(), MODEL_CFG, seed=0)
    bad = triples.copy()
    bad.loc[5, "y_o"] = None
    with pytest.raises(ValueError, match=r"triples column 'y_o' row 5"):
        train_sso(tiny_model_path, bad, cfg(), MODEL_CFG, seed=0)
    with pytest.raises(ValueError, match="missing column.*x_minus"):
        train_sso(tiny_model_path, triples.drop(columns=["x_minus"]), cfg(), MODEL_CFG, seed=0)


def test_schedule_is_seeded_and_covers_each_epoch():
    c = cfg(batch_size=3, grad_accum=2, epochs=2)
    a, b = build_schedule(10, c, seed=1), build_schedule(10, c, seed=1)
    assert a == b and a != build_schedule(10, c, seed=2)
    assert len(a) == 4                                       # ceil(ceil(10/3)/2) per epoch
    for epoch in (0, 1):
        rows = [i for e, micro in a if e == epoch for mb in micro for i in mb]
        assert sorted(rows) == list(range(10))
    assert len(build_schedule(10, cfg(batch_size=3, grad_accum=2, epochs=2, max_steps=3), seed=1)) == 3


# ---------------------------------------------------------------------------------------------
# DPO: first step, history/summary contract, parameters
# ---------------------------------------------------------------------------------------------


def test_dpo_starts_at_ln2_and_reports(tiny_model_path, pairs):
    res = train_dpo(tiny_model_path, pairs, cfg(max_steps=3, batch_size=8), MODEL_CFG, seed=0, progress=False)
    assert isinstance(res, TrainResult)
    h = res.history
    assert list(h["step"]) == [1, 2, 3]
    for col in ("epoch", "loss", "learning_rate", "tokens_per_s", "rewards_chosen", "rewards_rejected",
                "margin", "accuracy"):
        assert col in h.columns
    assert h["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-5)   # LoRA B = 0: policy == reference
    assert h["loss"].iloc[-1] != pytest.approx(math.log(2), abs=1e-4)
    s = res.summary
    assert s["steps"] == 3 and s["examples"] == 32 and s["final_loss"] == h["loss"].iloc[-1]
    for key in ("tokens_per_s", "seconds", "onpolicy_chosen", "onpolicy_rejected", "accuracy"):
        assert key in s
    assert 0 < s["onpolicy_chosen"] < 1 and 0 <= s["accuracy"] <= 1
    assert set(res.adapter) == {"adapter_config.json", "adapter_model.safetensors"}


def test_every_lora_parameter_moves_and_no_base_weight(tiny_model_path, triples):
    c = cfg(lora=LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj")))
    run, _ = trainer_mod.prepare_run(SSO_OBJECTIVE, tiny_model_path, triples.iloc[:8], c, MODEL_CFG, 0, None)
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    opt, sched = trainer_mod.make_optimizer(run.model, c, total_steps=2)
    run.model.train()
    for _ in range(2):   # step 1 moves every B (A has zero grad while B = 0); step 2 moves every A
        optimizer_step(run, opt, sched, [[0, 1, 2, 3]])
    for name, p in run.model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (name in trainable), name


# ---------------------------------------------------------------------------------------------
# SSO: both pairs are learnt
# ---------------------------------------------------------------------------------------------


def test_sso_fits_both_pairs_on_its_training_data(tiny_model_path, triples):
    res = train_sso(tiny_model_path, triples, TrainConfig(**SSO_FIT), MODEL_CFG, seed=0, progress=False)
    s, h = res.summary, res.history
    assert s["plus_accuracy"] >= 0.9 and s["minus_accuracy"] >= 0.9, s
    assert s["plus_margin"] > 0 and s["minus_margin"] > 0
    for prefix in ("plus_", "minus_"):
        for metric in ("rewards_chosen", "rewards_rejected", "margin", "accuracy", "sft"):
            assert prefix + metric in h.columns
    for key in ("onpolicy_plus_chosen", "onpolicy_plus_rejected", "onpolicy_minus_chosen",
                "onpolicy_minus_rejected", "onpolicy_y_minus_x_minus", "onpolicy_y_plus_plain"):
        assert 0 < s[key] < 1
    # start: policy == reference, so each DPO term is ln 2 and the loss is (1 + lam) ln 2 + gamma * SFT
    first = h.iloc[0]
    expected = 2 * math.log(2) + 0.1 * (first["plus_sft"] + first["minus_sft"])
    assert first["loss"] == pytest.approx(expected, abs=1e-4)
    assert h["loss"].iloc[-1] < first["loss"]


def test_ipo_accumulation_and_checkpointing_options_run(tiny_model_path, triples):
    c = cfg(loss="ipo", beta=0.2, grad_accum=2, batch_size=2, max_steps=2, gradient_checkpointing=True)
    res = train_sso(tiny_model_path, triples.iloc[:8], c, MODEL_CFG, seed=0, progress=False)
    assert len(res.history) == 2 and res.history["loss"].map(math.isfinite).all()
    # IPO at the start: ((0 - 0) - 1/(2 beta))^2 per pair, two pairs
    assert res.history["plus_base"].iloc[0] == pytest.approx((1 / 0.4) ** 2, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# Reference = starting adapter; checkpoints
# ---------------------------------------------------------------------------------------------


def test_init_adapter_is_the_reference(tiny_model_path, pairs):
    pairs = pairs.iloc[:16]
    first = train_dpo(tiny_model_path, pairs, cfg(max_steps=4, learning_rate=2e-2), MODEL_CFG, seed=0,
                      progress=False)
    again = train_dpo(tiny_model_path, pairs, cfg(max_steps=2), MODEL_CFG, seed=1,
                      init_adapter=first.adapter, progress=False)
    # if the reference were the bare base, the first loss would not be ln 2 (the adapter is trained)
    assert again.history["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-5)
    assert again.summary["onpolicy_chosen"] != pytest.approx(first.summary["onpolicy_chosen"], rel=1e-4)


def test_killed_run_resumes_with_identical_losses(tiny_model_path, pairs, tmp_path, monkeypatch):
    pairs = pairs.iloc[:24]
    c = cfg(max_steps=6, checkpoint_every=2, batch_size=4, warmup_ratio=0.3,
            lora=LoraConfig(r=4, alpha=8, dropout=0.1))
    full = train_dpo(tiny_model_path, pairs, c, MODEL_CFG, seed=3, progress=False)

    calls = {"n": 0}
    real_step = trainer_mod.optimizer_step

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:                      # checkpoints exist after steps 2 and 4
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kwargs)

    ckpt = tmp_path / "ckpt"
    monkeypatch.setattr(trainer_mod, "optimizer_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(tiny_model_path, pairs, c, MODEL_CFG, seed=3, checkpoint_dir=str(ckpt), progress=False)
    monkeypatch.setattr(trainer_mod, "optimizer_step", real_step)
    (fp_dir,) = [p for p in ckpt.iterdir() if not p.name.startswith(".")]   # one fingerprint
    assert [p.name for p in fp_dir.iterdir() if not p.name.startswith(".")] == ["step-00000004"]

    # a resumed run: its own (empty) root first, then the origin run's root
    own = tmp_path / "resumed-run"
    resumed = train_dpo(tiny_model_path, pairs, c, MODEL_CFG, seed=3, checkpoint_dir=str(own),
                        resume_dirs=[str(ckpt)], progress=False)
    assert resumed.summary["resumed_from_step"] == 4
    assert "origin run's checkpoint" in resumed.summary["checkpoint_note"]
    cols = ["step", "loss", "learning_rate", "rewards_chosen", "rewards_rejected", "grad_norm"]
    pd.testing.assert_frame_equal(resumed.history[cols], full.history[cols], check_exact=True)
    assert resumed.adapter == full.adapter

    # other data: the origin's checkpoint is not used, and the summary says why
    fresh = train_dpo(tiny_model_path, pairs.iloc[:20], c, MODEL_CFG, seed=3, checkpoint_dir=str(own),
                      resume_dirs=[str(ckpt)], progress=False)
    assert "resumed_from_step" not in fresh.summary
    assert "other data, config or seed" in fresh.summary["checkpoint_note"]
    assert fp_dir.name in fresh.summary["checkpoint_note"]


# ---------------------------------------------------------------------------------------------
# Equality with TRL's DPO loss
# ---------------------------------------------------------------------------------------------


def test_dpo_loss_equals_trl(tiny_model_path, tiny_tokenizer, pairs, tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from peft import LoraConfig as PeftLora
    from trl import DPOConfig, DPOTrainer

    from sso.training.losses import dpo_loss
    from sso.models.loading import load_model
    from scoring_helpers import build_batch

    from sso.training.scoring import sequence_logps

    sub = pairs.iloc[:4]
    ds = Dataset.from_dict({"prompt": list(sub["prompt_text"]), "chosen": list(sub["chosen"]),
                            "rejected": list(sub["rejected"])})
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, beta=0.1,
                     report_to="none", max_length=128, use_cpu=True, save_strategy="no",
                     disable_tqdm=True)
    trl_trainer = DPOTrainer(model=load_model(tiny_model_path, dtype="float32", device="cpu"), args=args,
                             train_dataset=ds, processing_class=tiny_tokenizer,
                             peft_config=PeftLora(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    model = trl_trainer.model
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():                      # a non-trivial adapter, else both losses are ln 2
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    model.eval()

    def ours(batch):
        logps, _ = sequence_logps(model, batch)
        with model.disable_adapter():
            ref, _ = sequence_logps(model, batch)
        return dpo_loss(*logps.chunk(2), *ref.chunk(2), beta=0.1)[0].mean()

    with torch.no_grad():
        # 1) our batch (separately tokenised prompt/response) through TRL's loss
        b = build_batch(tiny_tokenizer, list(sub["prompt_text"]) * 2,
                        list(sub["chosen"]) + list(sub["rejected"]), max_length=128)
        trl_inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                      "completion_mask": b["loss_mask"]}
        trl_loss = trl_trainer.compute_loss(model, trl_inputs)
        assert abs(trl_loss.item() - math.log(2)) > 1e-3
        assert ours(b).item() == pytest.approx(trl_loss.item(), abs=1e-5)
        # 2) TRL's own tokenisation and collation through our scoring
        trl_batch = next(iter(trl_trainer.get_train_dataloader()))
        trl_loss = trl_trainer.compute_loss(model, trl_batch)
        ours_on_trl = {"input_ids": trl_batch["input_ids"], "attention_mask": trl_batch["attention_mask"],
                       "loss_mask": trl_batch["completion_mask"]}
        assert ours(ours_on_trl).item() == pytest.approx(trl_loss.item(), abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Capped responses, over-long prompts
# ---------------------------------------------------------------------------------------------


def test_capped_responses_are_scored_without_end_of_turn(tiny_model_path, tiny_tokenizer, pairs):
    from sso.generation.chat import end_of_turn_id
    from sso.training.objectives import DPO_OBJECTIVE

    eot = end_of_turn_id(tiny_tokenizer)
    sub = pairs.iloc[:4].copy()
    plain, _ = trainer_mod.prepare_run(DPO_OBJECTIVE, tiny_model_path, sub, cfg(), MODEL_CFG, 0, None)
    sub["chosen_finished"] = [False, True, False, True]      # rows 0 and 2 hit max_new_tokens
    run, info = trainer_mod.prepare_run(DPO_OBJECTIVE, tiny_model_path, sub, cfg(), MODEL_CFG, 0, None)
    assert info["n_capped_responses"] == 2
    for i in range(4):
        chosen, rejected = run.encoded[0][i][1], run.encoded[1][i][1]
        assert rejected[-1] == eot                             # no rejected_finished column: finished
        assert (chosen[-1] == eot) == (i % 2 == 1)
        assert chosen == (plain.encoded[0][i][1] if i % 2 else plain.encoded[0][i][1][:-1])
    # the reference log-probs leave out exactly the end-of-turn term of the capped responses
    assert torch.allclose(run.ref_logps[1], plain.ref_logps[1])
    assert (run.ref_logps[0, [0, 2]] > plain.ref_logps[0, [0, 2]]).all()
    assert torch.allclose(run.ref_logps[0, [1, 3]], plain.ref_logps[0, [1, 3]])


def test_sso_summary_counts_capped_responses(tiny_model_path, triples):
    sub = triples.iloc[:4].assign(y_plus_finished=[True, False, True, True],
                                  y_minus_finished=[False, False, True, True])
    res = train_sso(tiny_model_path, sub, cfg(max_steps=1), MODEL_CFG, seed=0, progress=False)
    assert res.summary["n_capped_responses"] == 3 and res.summary["n_dropped_prompt_too_long"] == 0
    bad = sub.assign(y_o_finished=[True, None, True, True])
    with pytest.raises(ValueError, match=r"triples column 'y_o_finished' row 1 \(query_id q1\) must be True or False"):
        train_sso(tiny_model_path, bad, cfg(), MODEL_CFG, seed=0)


def test_finished_flags_change_the_checkpoint_fingerprint(pairs):
    from sso.training.objectives import DPO_OBJECTIVE

    base = checkpoints_mod.run_fingerprint(DPO_OBJECTIVE, pairs, cfg(), MODEL_CFG, 0, None)
    capped = pairs.assign(rejected_finished=[i != 3 for i in range(len(pairs))])
    assert checkpoints_mod.run_fingerprint(DPO_OBJECTIVE, capped, cfg(), MODEL_CFG, 0, None) != base
    assert checkpoints_mod.run_fingerprint(DPO_OBJECTIVE, pairs.assign(rejected_finished=True), cfg(),
                                       MODEL_CFG, 0, None) == base
    longer = ModelConfig(name="sso-tiny", dtype="float32", device="cpu", max_length=256)
    assert checkpoints_mod.run_fingerprint(DPO_OBJECTIVE, pairs, cfg(), longer, 0, None) != base


def _long_principle_rows(triples, rows: list[int]) -> pd.DataFrame:
    """Triples whose x_plus in ``rows`` carries a principle of about 150 tokens."""
    out = triples.iloc[:8].copy()
    long = "Be thorough: " + " ".join(["consider every single detail of the question"] * 20)
    for i in rows:
        query = out["prompt_text"].iloc[i]
        out.loc[i, "x_plus"] = query.replace("<|im_start|>user", f"<|im_start|>system\n{long}<|im_end|>\n"
                                             "<|im_start|>user", 1)
    return out


def test_prompts_are_never_cut_too_long_examples_are_dropped(tiny_model_path, tiny_tokenizer, triples):
    from sso.generation.chat import encode_prompt

    sub = _long_principle_rows(triples, [2, 5])
    assert len(encode_prompt(tiny_tokenizer, sub["x_plus"].iloc[2])) > MODEL_CFG.max_length
    res = train_sso(tiny_model_path, sub, cfg(max_steps=1), MODEL_CFG, seed=0, progress=False)
    s = res.summary
    assert s["n_dropped_prompt_too_long"] == 2 and s["dropped_prompt_too_long_query_ids"] == ["q2", "q5"]
    assert s["examples"] == 6 and s["examples_seen"] == 4
    run, info = trainer_mod.prepare_run(SSO_OBJECTIVE, tiny_model_path, sub, cfg(), MODEL_CFG, 0, None)
    kept = [i for i in range(8) if i not in (2, 5)]
    assert len(run.encoded[0]) == 6 and run.ref_logps.shape == (4, 6)
    for j, i in enumerate(kept):                   # every kept prompt is scored whole
        assert run.encoded[0][j][0] == encode_prompt(tiny_tokenizer, sub["x_plus"].iloc[i])
        assert run.encoded[2][j][0] == encode_prompt(tiny_tokenizer, sub["x_minus"].iloc[i])


def test_every_prompt_too_long_names_max_length(tiny_model_path, triples):
    sub = _long_principle_rows(triples, list(range(8)))
    with pytest.raises(ValueError, match=r"\[model\] max_length = 128 \(the longest prompt has \d+ tokens"):
        train_sso(tiny_model_path, sub, cfg(), MODEL_CFG, seed=0, progress=False)

"""Exported files are usable without Metaflow: datasets + TRL read the preferences unchanged, the
adapters reload with PeftModel and reproduce the trained model's logits, the manifest is honest."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from sso.generation.chat import render_prompt
from sso.config import ModelConfig, TrainConfig
from sso.training.probe import compute_logits_probe, probe_matches

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MODEL_CFG = ModelConfig(name="sso-tiny", dtype="float32", device="cpu", max_length=96)


def _words(rng: random.Random, vocab: list[str], lo: int, hi: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    """Preference pairs shaped like the flow's ``sso_pairs`` (metadata columns included)."""
    import pydoc_data.topics

    vocab = sorted(set(" ".join(pydoc_data.topics.topics.values()).split()))[:3000]
    rng = random.Random(7)
    return pd.DataFrame([{"query_id": f"q{i}", "prompt": _words(rng, vocab, 3, 6),
                          "chosen": _words(rng, vocab, 4, 9), "rejected": _words(rng, vocab, 4, 9),
                          "good_principle": "Be clear.", "bad_principle": "Be vague."}
                         for i in range(8)])


@pytest.fixture(scope="module")
def export(tiny_model_path, tiny_tokenizer, pairs, tmp_path_factory):
    """Train a tiny policy for a few steps, then export it the way the flow's ``end`` does."""
    from sso.training.trainer import train_dpo
    from sso.report.results import build_results
    from types import SimpleNamespace

    from sso.report.export import export_run

    table = pd.DataFrame({"query_id": pairs["query_id"],
                          "prompt_text": [render_prompt(tiny_tokenizer, p) for p in pairs["prompt"]],
                          "chosen": pairs["chosen"], "rejected": pairs["rejected"]})
    cfg = TrainConfig(learning_rate=5e-3, epochs=1, batch_size=4, warmup_ratio=0.0, log_every=1)
    result = train_dpo(tiny_model_path, table, cfg, MODEL_CFG, seed=0, progress=False)
    results = build_results([{"arm": "sso", "n_pairs": len(pairs), "train_summary": result.summary}])
    out = tmp_path_factory.mktemp("export") / "SSOFlow-1"
    data = SimpleNamespace(results=results, sso_pairs=pairs, pbaa_pairs=pairs.iloc[:5],
                           generator_adapter=None, policy_adapters={"sso": result.adapter},
                           policy_summaries={"sso": result.summary})
    written = export_run(str(out), data, run_info={"flow": "SSOFlow", "run_id": "1", "model": tiny_model_path})
    return out, written, result


def test_layout_and_manifest(export, pairs):
    out, written, result = export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == "1" and manifest["arms"] == ["sso", "pbaa"]
    by_path = {f["path"]: f for f in manifest["files"]}
    assert by_path["preferences/sso.parquet"]["rows"] == len(pairs)
    assert by_path["preferences/pbaa.jsonl"]["rows"] == 5
    for rel, entry in by_path.items():   # every listed file is there, with its size and hash
        data = (out / rel).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"], rel
    assert "adapters/policy-sso/adapter_model.safetensors" in by_path
    entry = manifest["adapters"]["policy-sso"]
    assert entry["logits_probe"] == result.summary["logits_probe"]
    assert entry["r"] == 8 and entry["path"] == "adapters/policy-sso"
    assert Path(entry["base_model_name_or_path"]).resolve() == Path(manifest["model"]).resolve()
    assert set(written) == {"results", "preferences_sso", "preferences_pbaa", "adapter_policy_sso",
                            "manifest"}


def test_jsonl_and_parquet_hold_the_same_pairs(export, pairs):
    from sso.report.export import load_preferences

    out, _, _ = export
    parquet = load_preferences(out, "sso")
    jsonl = pd.read_json(out / "preferences" / "sso.jsonl", lines=True, dtype=False)
    pd.testing.assert_frame_equal(parquet, pairs, check_dtype=False)
    pd.testing.assert_frame_equal(jsonl, pairs, check_dtype=False)
    with pytest.raises(FileNotFoundError, match="have \\['pbaa', 'sso'\\]"):
        load_preferences(out, "nope")


def test_exported_parquet_trains_one_trl_dpo_step(export, tiny_model_path, tiny_tokenizer, tmp_path):
    """The Parquet file goes into datasets and TRL's DPOTrainer unchanged (LoRA, one step)."""
    pytest.importorskip("trl")
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from sso.models.loading import load_model

    out, written, _ = export
    ds = load_dataset("parquet", data_files=written["preferences_sso"], split="train")
    assert ds.num_rows == 8 and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_steps=1,
                     learning_rate=5e-3, beta=0.1, report_to="none", use_cpu=True, max_length=96,
                     save_strategy="no", disable_tqdm=True, logging_steps=1)
    trainer = DPOTrainer(model=load_model(tiny_model_path, dtype="float32", device="cpu"), args=args,
                         train_dataset=ds, processing_class=tiny_tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert trainer.state.global_step == 1
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and math.isfinite(losses[0])
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before), "no LoRA weight moved"


def test_exported_adapter_reproduces_the_logged_logits(export, tiny_model_path):
    """PeftModel.from_pretrained on the exported directory == the model as it was after training."""
    from peft import PeftModel

    from sso.report.export import load_adapter_model
    from sso.models.loading import load_model

    out, written, result = export
    logged = result.summary["logits_probe"]
    base = load_model(tiny_model_path, dtype="float32", device="cpu")
    assert not probe_matches(logged, compute_logits_probe(base)), "adapter makes no difference"
    reloaded = PeftModel.from_pretrained(base, written["adapter_policy_sso"])
    assert probe_matches(logged, compute_logits_probe(reloaded))
    # the no-Metaflow helper finds the base model through the manifest
    assert probe_matches(logged, compute_logits_probe(load_adapter_model(out, "policy-sso")))


def test_probe_is_a_fixed_function_of_the_vocab():
    from sso.training.probe import probe_input_ids

    ids = probe_input_ids(4096)
    assert ids == probe_input_ids(4096) and len(ids) == 16 and all(0 <= i < 4096 for i in ids)
    assert len(set(ids)) == 16
    with pytest.raises(ValueError, match="vocab_size"):
        probe_input_ids(1)
    probe = {"input_ids": [1], "sum": 1.0, "abs_sum": 2.0, "top_logits": [0.5]}
    assert probe_matches(probe, dict(probe))
    assert not probe_matches(probe, {**probe, "sum": 1.01})
    assert not probe_matches(probe, {**probe, "input_ids": [2]})


def test_write_export_rejects_tables_without_pair_columns(tmp_path):
    from sso.report.export import write_export

    with pytest.raises(ValueError, match=r"preferences\['sso'\] lacks column\(s\) \['rejected'\]"):
        write_export(tmp_path, results=pd.DataFrame({"arm": ["sso"]}),
                     preferences={"sso": pd.DataFrame({"prompt": ["p"], "chosen": ["c"]})}, adapters={})
    with pytest.raises(FileNotFoundError, match="not an sso export"):
        from sso.report.export import load_manifest

        load_manifest(tmp_path / "empty")

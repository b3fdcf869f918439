"""``finetuning = "full"`` for the generator and the policies, trained on 2 processes under
torchrun inside the flow (the generator with DeepSpeed ZeRO-3, as the paper trains, the policies
with DDP): the generator's full weights sample the SSO pairs, the policies answer
and are judged, and every exported model directory reloads with
``AutoModelForCausalLM.from_pretrained`` to the logits the trainer measured. The weights are files in the datastore (``sso-models/``), the
artifacts small references to them."""

import json
from pathlib import Path

import pytest

FLOW = str(Path(__file__).resolve().parents[2] / "flows" / "sso_flow.py")
pytestmark = [pytest.mark.flow, pytest.mark.slow]

CONFIG = """
[run]
output_dir = "{out}"
[data]
n_queries = 8
n_eval = 4
[sampling]
backend = "transformers"
max_new_tokens = 12
shards = 1
[generator]
finetuning = "full"
strategy = "zero3"
learning_rate = 1e-3
epochs = 1
batch_size = 4
[policy]
arms = ["sso", "pbaa"]
finetuning = "full"
learning_rate = 1e-3
epochs = 1
batch_size = 4
[eval]
max_new_tokens = 12
[judge]
accuracy_pairs = 4
[resources.train]
processes = 2
"""


def test_full_finetuning_under_torchrun_exports_models_that_reload(mf_env):
    from metaflow import Runner
    from transformers import AutoModelForCausalLM

    from sso.models.loading import resolve_model_path
    from sso.training.policy import is_full_model
    from sso.training.probe import compute_logits_probe, probe_matches
    from sso.training.stored import StoredFiles

    out = mf_env["root"] / "out"
    cfg = mf_env["root"] / "full.toml"
    cfg.write_text(CONFIG.format(out=out))
    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=mf_env["env"], config=[("cfg", str(cfg))]) as runner:
        result = runner.run()
        assert result.status == "successful", result.stderr[-5000:]
        data = result.run.data
    assert is_full_model(data.generator_adapter) and all(map(is_full_model, data.policy_adapters.values()))
    # the weights live in the datastore, raw and content-addressed; the artifacts are references
    assert isinstance(data.generator_adapter, StoredFiles)
    models = mf_env["root"] / ".metaflow" / "SSOFlow" / "sso-models"
    assert Path(data.policy_adapters["sso"].url("model.safetensors")).parent.parent == models
    stored = [data.generator_adapter, *data.policy_adapters.values()]
    keys = {key for model in stored for key in model.keys.values()}
    assert {p.name for p in models.glob("??/*")} == keys     # each distinct file once (configs are shared)
    assert len({model.keys["model.safetensors"] for model in stored}) == 3
    assert data.generator_summary["processes"] == 2 and len(data.sso_pairs) > 0
    assert data.generator_summary["strategy"] == "zero3" and data.policy_summaries["sso"]["strategy"] == "ddp"
    assert list(data.results["n_eval"]) == [4, 4]
    export = next(out.iterdir())
    manifest = json.loads((export / "manifest.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("sso-tiny"))
    assert sorted(manifest["adapters"]) == ["generator", "policy-pbaa", "policy-sso"]
    for name, entry in manifest["adapters"].items():
        assert entry["kind"] == "full_model"
        model = AutoModelForCausalLM.from_pretrained(export / entry["path"])
        assert probe_matches(entry["logits_probe"], compute_logits_probe(model)), name
        assert not probe_matches(entry["logits_probe"], compute_logits_probe(base)), f"{name} did not train"

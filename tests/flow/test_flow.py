"""End-to-end: the default flow through metaflow.Runner, then a failure and `resume`."""

import io
import math

import pandas as pd
import pytest
# Import the ML stack before metaflow's Runner/Client touch anything: once metaflow has loaded a
# flow in-process, a first import of torch.distributed can pick up metaflow's vendored
# typing_extensions and fail.
from peft import PeftConfig
from safetensors.torch import load as load_safetensors

FLOW = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "flows" / "sso_flow.py")

pytestmark = [pytest.mark.flow, pytest.mark.slow]


def _lora_b_nonzero(adapter_files):
    tensors = load_safetensors(adapter_files["adapter_model.safetensors"])
    b = {k: t for k, t in tensors.items() if "lora_B" in k}
    assert b, "adapter has no lora_B tensors"
    return all(t.abs().sum().item() > 0 for t in b.values())


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One run of the default config (configs/tiny.toml), shared by the assertions below."""
    import os

    from metaflow import Runner

    root = tmp_path_factory.mktemp("default-run")
    env = {"METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root), "METAFLOW_HOME": str(root / "mfhome"),
           "METAFLOW_CLIENT_CACHE_PATH": str(root / "cache"), "PYTHONPATH": os.getcwd()}
    with Runner(FLOW, show_output=False, cwd=str(root), env=env) as runner:
        result = runner.run()
        assert result.status == "successful", result.stderr[-5000:]
        return result.run, root, result.stdout


def test_query_artifacts(default_run):
    run, _, _ = default_run
    data = run.data
    assert len(data.queries) == 48 and len(data.eval_queries) == 16
    assert not set(data.queries.query_id) & set(data.eval_queries.query_id)
    assert data.query_report["kept"] == data.query_report["rows_read"] >= 200
    assert list(data.principles.query_id) == list(data.queries.query_id)
    assert (data.principles.good_principle != data.principles.bad_principle).all()


def test_sampling_artifacts(default_run):
    data = default_run[0].data
    triples, pairs = data.sso_triples, data.pbaa_pairs
    rep = data.sampling_report
    assert {"query_id", "prompt", "y_plus", "y_minus", "y_o"} <= set(triples.columns)
    assert {"prompt", "chosen", "rejected"} <= set(pairs.columns)
    dropped_triples = sum(v for k, v in rep.items() if k.startswith("triples_dropped_"))
    assert len(triples) + dropped_triples >= 48 and len(triples) == rep["n_sso_triples"] > 0
    assert (triples.y_plus != triples.y_minus).all() and (triples.y_o != triples.y_plus).all()
    assert (pairs.chosen != pairs.rejected).all()
    assert list(data.base_answers.query_id) == list(data.eval_queries.query_id)
    # foreach really fanned out: one sample_responses task per shard
    assert len(list(default_run[0]["sample_responses"])) == 2


def test_generator_artifacts(default_run):
    data = default_run[0].data
    assert _lora_b_nonzero(data.generator_adapter)  # trained, not the zero-initialised LoRA
    hist = data.generator_history
    assert len(hist) > 0 and hist["loss"].notna().all()
    assert data.generator_summary["steps"] == hist["step"].max()
    # the SSO loss steers both ways: on its own training data the generator separates
    # y+ from y- under x+ and prefers y_o over y+ under x-
    assert data.generator_summary["plus_accuracy"] >= 0.9
    assert data.generator_summary["minus_accuracy"] >= 0.9
    pairs = data.sso_pairs
    assert {"prompt", "chosen", "rejected"} <= set(pairs.columns) and len(pairs) > 0
    assert set(pairs.query_id) <= set(data.queries.query_id)


def test_results_one_row_per_arm(default_run):
    run = default_run[0]
    results = run.data.results
    assert list(results.arm) == ["sso", "pbaa"]
    for col in ("n_pairs", "final_loss", "win_rate", "ties", "unparsable"):
        assert col in results.columns
    assert results.n_pairs.tolist() == [len(run.data.sso_pairs), len(run.data.pbaa_pairs)]
    assert all(0.0 <= w <= 1.0 for w in results.win_rate)
    assert all(math.isfinite(x) for x in results.final_loss)
    # every eval query judged in both orders for each arm
    judgments = run.data.judgments
    wr = judgments[judgments["kind"] == "win_rate"]
    assert len(wr) == 2 * 2 * len(run.data.eval_queries)
    for arm, adapter in run.data.policy_adapters.items():
        assert _lora_b_nonzero(adapter), arm
    assert run.data.policy_adapters["sso"] != run.data.policy_adapters["pbaa"]


def test_summary_printed_and_files_exported(default_run):
    run, _, stdout = default_run
    assert "win_rate" in stdout and "sso" in stdout and "pbaa" in stdout
    exported = run.data.exported
    back = pd.read_parquet(exported["preferences_sso"])
    assert back.equals(run.data.sso_pairs)
    assert PeftConfig.from_pretrained(exported["adapter_policy_sso"]).r == 8


def test_resume_after_failure_clones_earlier_steps(mf_env):
    from metaflow import Runner

    env = {**mf_env["env"], "SSO_FAIL_AT_STEP": "judge"}
    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=env) as runner:
        failed = runner.run(n_queries=12)
        assert failed.status == "failed"
        origin = failed.run
        assert any("SSO_FAIL_AT_STEP=judge: injected failure" in t.stderr for t in origin["judge"])
        assert not origin.successful
        assert origin["train_generator"].task.finished
    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=mf_env["env"]) as runner:
        resumed = runner.resume(origin_run_id=origin.id)
        assert resumed.status == "successful", resumed.stderr[-5000:]
        run = resumed.run
    for name in ("start", "load_queries", "sample_responses", "train_generator", "train_policy",
                 "generate_answers"):
        for task in run[name]:
            assert task.origin_pathspec is not None, f"{name} was recomputed"
    assert all(t.origin_pathspec is None for t in run["judge"])
    assert len(run.data.queries) == 12  # the origin's parameters are kept
    assert run.data.generator_adapter == origin["train_generator"].task.data.generator_adapter
    assert list(run.data.results.arm) == ["sso", "pbaa"]

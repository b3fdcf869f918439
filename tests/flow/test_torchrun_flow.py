"""Data-parallel training inside the flow, against the single-process run of the same config:

- ``[resources.train] processes = 2``: SSOFlow's generator and policy steps train under one local
  torchrun (DDP, gloo on CPU);
- ``[resources.train] nodes = 2``: SSOMultiNodeFlow's training steps run as Metaflow ``@parallel``
  node tasks, each starting torchrun with ``--nnodes 2 --node_rank i`` (locally: two processes on
  this machine, rendezvous at 127.0.0.1).

Both log the single-process loss curves (the generator with LoRA under DDP, the policy fully
fine-tuned under FSDP2: ``strategy = "fsdp"``, sharded over the 2 ranks, across the 2 nodes);
the rank-0 models then sample and are judged, and the multi-node run's exported policy reloads
with ``AutoModelForCausalLM.from_pretrained``."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import client_for  # noqa: E402  (tests/flow/conftest.py)

FLOWS = Path(__file__).resolve().parents[2] / "flows"
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
epochs = 2
batch_size = 4
[policy]
arms = ["sso"]
finetuning = "full"
strategy = "fsdp"
learning_rate = 1e-3
epochs = 2
batch_size = 4
[eval]
max_new_tokens = 12
[judge]
accuracy_pairs = 4
[resources.train]
processes = {processes}
nodes = {nodes}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(flow_file, processes, nodes)``: (that run's data, its datastore root: exports in
    ``out/``), each run once per module in its own datastore."""
    done = {}

    def run(flow: str, processes: int, nodes: int = 1):
        from metaflow import Runner

        key = (flow, processes, nodes)
        if key not in done:
            root = tmp_path_factory.mktemp(f"{Path(flow).stem}-p{processes}-n{nodes}")
            env, cfg = _setup(root, processes, nodes)
            with Runner(str(FLOWS / flow), show_output=False, cwd=str(root), env=env,
                        config=[("cfg", str(cfg))]) as runner:
                result = runner.run()
                assert result.status == "successful", result.stderr[-5000:]
                done[key] = (result.run.data, root)
        return done[key]

    return run


def _setup(root: Path, processes: int, nodes: int) -> tuple[dict, Path]:
    """(Runner env of a datastore in ``root``, the config file written there)."""
    (root / "mfhome").mkdir()
    env = {"METAFLOW_HOME": str(root / "mfhome"), "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root),
           "METAFLOW_CLIENT_CACHE_PATH": str(root / "client-cache"), "PYTHONPATH": str(FLOWS.parent)}
    cfg = root / "cfg.toml"
    cfg.write_text(CONFIG.format(out=root / "out", processes=processes, nodes=nodes))
    return env, cfg


def _same_curves(one, other):
    for a, b in ((one.generator_history, other.generator_history),
                 (one.policy_histories["sso"], other.policy_histories["sso"])):
        assert len(a) == len(b) >= 4
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4)
        assert not np.allclose(a["loss"], a["loss"].iloc[0])            # the loss moved


def test_two_processes_under_torchrun_give_the_single_process_loss_curves(runs):
    (one, _), (two, _) = runs("sso_flow.py", 1), runs("sso_flow.py", 2)
    assert two.generator_summary["processes"] == 2 and "processes" not in one.generator_summary
    assert two.policy_summaries["sso"]["processes"] == 2
    _same_curves(one, two)
    assert len(two.sso_pairs) == len(one.sso_pairs)
    assert two.results.loc[0, "n_eval"] == one.results.loc[0, "n_eval"] == 4


def test_two_nodes_under_parallel_give_the_single_process_loss_curves_and_a_model_that_reloads(runs):
    from metaflow import Flow
    from transformers import AutoModelForCausalLM

    from sso.training.probe import compute_logits_probe, probe_matches

    (one, _), (nodes, root) = runs("sso_flow.py", 1), runs("sso_multinode_flow.py", 1, nodes=2)
    for summary in (nodes.generator_summary, nodes.policy_summaries["sso"]):
        assert summary["nodes"] == 2 and summary["processes"] == 2
    _same_curves(one, nodes)
    assert nodes.sso_pairs.equals(one.sso_pairs)            # same generator -> same greedy/seeded pairs
    assert nodes.results.loc[0, "n_eval"] == 4

    client_for(root)
    for step, output in (("train_generator_nodes", "generator_summary"), ("train_policy_nodes", "policy_summary")):
        tasks = sorted(Flow("SSOMultiNodeFlow").latest_run[step], key=lambda t: t["node_index"].data)
        assert [t["node_index"].data for t in tasks] == [0, 1]
        assert [t[output].data is None for t in tasks] == [False, True]     # rank 0 (node 0) alone stores
    export = next((root / "out").iterdir())
    entry = json.loads((export / "manifest.json").read_text())["adapters"]["policy-sso"]
    assert entry["kind"] == "full_model"
    model = AutoModelForCausalLM.from_pretrained(export / entry["path"])
    assert probe_matches(entry["logits_probe"], compute_logits_probe(model))


def test_resume_of_the_multi_node_flow_clones_finished_node_tasks_and_reruns_the_failed_ones(runs, tmp_path):
    """The policy's node tasks fail (both attempts), ``resume`` clones the generator's node tasks
    (every node: no training paid twice) and trains the policy on 2 nodes again, to the loss curve
    of the uninterrupted multi-node run."""
    from metaflow import Flow, Runner

    straight, _ = runs("sso_multinode_flow.py", 1, nodes=2)
    env, cfg = _setup(tmp_path, processes=1, nodes=2)
    flow = str(FLOWS / "sso_multinode_flow.py")
    with Runner(flow, show_output=False, cwd=str(tmp_path), env={**env, "SSO_FAIL_AT_STEP": "train_policy_nodes"},
                config=[("cfg", str(cfg))]) as runner:
        assert runner.run().status == "failed"
    client_for(tmp_path)
    origin = Flow("SSOMultiNodeFlow").latest_run
    with Runner(flow, show_output=False, cwd=str(tmp_path), env=env) as runner:
        resumed = runner.resume(origin_run_id=origin.id)
        assert resumed.status == "successful", resumed.stderr[-5000:]
    run = resumed.run
    generator_nodes = list(run["train_generator_nodes"])
    assert len(generator_nodes) == 2 and all(t.origin_pathspec for t in generator_nodes)
    policy_nodes = list(run["train_policy_nodes"])
    assert len(policy_nodes) == 2 and not any(t.origin_pathspec for t in policy_nodes)
    np.testing.assert_allclose(run.data.policy_histories["sso"]["loss"], straight.policy_histories["sso"]["loss"],
                               rtol=1e-5)

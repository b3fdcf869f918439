"""The Metaflow side of multi-node training steps (flows/sso_nodes.py): the torchrun command each
node runs, the port the nodes agree on, and which join input is node 0."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "flows"))
from sso_nodes import NodeLauncher, check_batch_metadata, node_zero, parallel_nodes  # noqa: E402


def test_each_node_runs_torchrun_with_its_rank_and_the_rendezvous_of_node_zero():
    key = "1796/train_policy_nodes/16"
    zero, one = NodeLauncher(2, 0, "10.0.0.5", key), NodeLauncher(2, 1, "10.0.0.5", key)
    assert zero.port == one.port and 20000 <= zero.port < 40000          # the nodes agree
    assert NodeLauncher(2, 0, "10.0.0.5", "1796/train_policy_nodes/17").port != zero.port
    cmd = one.command(["--input", "job.pkl", "--output", "out.pkl"], nproc=8)
    assert {"--nproc_per_node=8", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.5",
            f"--master_port={one.port}"} <= set(cmd)
    assert cmd[cmd.index("-m", 3):] == ["-m", "sso.training.launch", "--input", "job.pkl", "--output", "out.pkl"]
    with pytest.raises(ValueError, match="node_rank"):
        NodeLauncher(2, 2, "10.0.0.5", key).command([], nproc=1)


def test_a_failed_torchrun_on_a_node_fails_that_node_with_its_exit_code(monkeypatch):
    launcher = NodeLauncher(2, 1, "127.0.0.1", "run/step/1")
    monkeypatch.setattr(launcher, "command", lambda args, nproc: [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match=r"torchrun on node 1 of 2 exited with 3"):
        launcher([], 1)
    monkeypatch.setattr(launcher, "command", lambda args, nproc: [sys.executable, "-c", "pass"])
    assert launcher([], 1) is False                                       # ran; rank 0 is elsewhere


def test_parallel_nodes_reads_metaflows_environment(monkeypatch):
    for name in ("MF_PARALLEL_NUM_NODES", "MF_PARALLEL_NODE_INDEX", "MF_PARALLEL_CONTROL_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert parallel_nodes() == (1, 0, None)
    monkeypatch.setenv("MF_PARALLEL_NUM_NODES", "4")
    monkeypatch.setenv("MF_PARALLEL_NODE_INDEX", "3")
    monkeypatch.setenv("MF_PARALLEL_CONTROL_TASK_ID", "16")
    assert parallel_nodes() == (4, 3, "16")


def test_the_join_keeps_node_zero_and_refuses_anything_else():
    inputs = [SimpleNamespace(node_index=1, policy_summary=None), SimpleNamespace(node_index=0, policy_summary={"x": 1})]
    assert node_zero(inputs).policy_summary == {"x": 1}
    with pytest.raises(RuntimeError, match="exactly one node-0 task among 2 inputs, found 0"):
        node_zero([SimpleNamespace(node_index=1), SimpleNamespace(node_index=2)])


def test_multi_node_on_batch_with_local_metadata_is_refused_with_what_to_do(monkeypatch):
    from sso.config import ConfigError

    monkeypatch.delenv("AWS_BATCH_JOB_ID", raising=False)
    check_batch_metadata(2)                                  # not on Batch: Kubernetes, local, Argo
    monkeypatch.setenv("AWS_BATCH_JOB_ID", "job-1")
    check_batch_metadata(1)                                  # one node: no cross-node wait
    monkeypatch.setenv("METAFLOW_DEFAULT_METADATA", "service")
    check_batch_metadata(4)
    monkeypatch.setenv("METAFLOW_DEFAULT_METADATA", "local")
    with pytest.raises(ConfigError, match=r"nodes = 4 on AWS Batch needs the Metaflow metadata service "
                                          r"\(METAFLOW_DEFAULT_METADATA=service"):
        check_batch_metadata(4)

"""The multi-node flow on AWS Batch: ``sso_multinode_flow.py run --with batch`` against the emulation.

Each training step of SSOMultiNodeFlow (``train_generator_nodes``, ``train_policy_nodes``:
Metaflow ``@parallel``) becomes one Batch multi-node parallel job, registered and submitted by
Metaflow's own Batch launcher; the emulation runs its ``numNodes`` containers at once with the
per-node commands of SubmitJob's ``nodeOverrides`` and the node variables Batch sets
(``fake_batch_server.py``). The tiny model on CPU: what is under test is the job spec (type, node
count, image, GPUs per node, the node's command) and the plumbing, not the model.

- ``nodes = 2`` with local metadata (what the emulation has; there is no metadata service here)
  is refused in ``start``, before any sampling is paid for: Metaflow's node 0 would wait for the
  other nodes' tasks in a metadata it cannot see and fail after 600 s (sso_nodes.check_batch_metadata);
- ``nodes = 1`` runs the whole multi-node flow on Batch: each training task is a multi-node job of
  one node of [resources.train], its join keeps node 0's outputs, checkpoints go through S3.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cloudkit import API_KEY_VALUE, read_jobs
from test_fake_batch import GPU_IMAGE, RESOURCES, WITH_IMAGE, _config, _drive, _s3_keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from judge_server import JudgeServer  # noqa: E402

pytestmark = [pytest.mark.cloud, pytest.mark.slow, pytest.mark.timeout(900)]

NODE_STEPS = ("train_generator_nodes", "train_policy_nodes")
FLOW_FILE = "sso_multinode_flow.py"


def _multinode_config(judge_url: str, nodes: int) -> str:
    """The fake-Batch test's config with [resources.train] on ``nodes`` nodes of one GPU (one
    process each: the tiny model runs on CPU), and a checkpoint after every optimizer step of two."""
    text = _config(judge_url).replace("batch_size = 4\n", "batch_size = 2\n")     # generator, policy
    text = text.replace("[generator]\n", "[generator]\ncheckpoint_every = 1\n")
    text = text.replace("[policy]\n", "[policy]\ncheckpoint_every = 1\n")
    return text.replace("[resources.train]\n", f"[resources.train]\nnodes = {nodes}\nprocesses = 1\n")


def test_two_nodes_with_local_metadata_are_refused_before_anything_is_paid_for(fake_aws, cloud_env):
    before = len(read_jobs(fake_aws))
    config = cloud_env["root"] / "batch-2-nodes.toml"
    config.write_text(_multinode_config("http://judge.invalid/v1", 2))
    run = _drive(cloud_env, "run", str(config), f"batch:image={WITH_IMAGE}", FLOW_FILE, timeout=300)
    assert run["status"] == "failed", run
    jobs = read_jobs(fake_aws)[before:]
    assert [(j["step"], j["exit_code"]) for j in jobs] == [("start", 1)]
    log = (Path(fake_aws["workdir"]) / "jobs" / f"{jobs[0]['job_id']}.log").read_text()
    assert "nodes = 2 on AWS Batch needs the Metaflow metadata service" in log, log[-3000:]
    assert "METAFLOW_DEFAULT_METADATA=service" in log and "Traceback" not in log.split("nodes = 2 on")[0][-400:]


def test_multinode_flow_runs_its_training_steps_as_batch_multinode_jobs(fake_aws, cloud_env):
    before = len(read_jobs(fake_aws))
    with JudgeServer(require_key=API_KEY_VALUE) as judge:
        config = cloud_env["root"] / "batch-nodes.toml"
        config.write_text(_multinode_config(judge.url, 1))
        run = _drive(cloud_env, "run", str(config), f"batch:image={WITH_IMAGE}", FLOW_FILE, timeout=840)
    assert run["status"] == "successful" and run["successful"], run
    jobs = read_jobs(fake_aws)[before:]
    assert all(j["exit_code"] == 0 for j in jobs), [(j["step"], j["exit_code"]) for j in jobs]

    # 1. the job spec: one multi-node job per training task, its node(s) of [resources.train]
    train = RESOURCES["train"]
    for step in NODE_STEPS:
        (job,) = [j for j in jobs if j["step"] == step]
        assert job["job_type"] == "multinode" and job["num_nodes"] == 1 and job["node_index"] == 0, step
        assert job["job_id"].endswith("#0"), job["job_id"]          # Batch's id of node 0
        assert job["image"] == GPU_IMAGE and job["queue"] == train["queue"], step
        assert job["resources"]["GPU"] == str(train["gpu"]), step          # GPUs per node
        assert job["resources"]["VCPU"] == str(train["cpu"]), step
        assert job["resources"]["MEMORY"] == str(train["memory"]), step
        assert job["timeout"]["attemptDurationSeconds"] == 60 * train["timeout_minutes"], step
        assert API_KEY_VALUE not in job["env_blob"], step
        assert "MF_PARALLEL_CONTROL_TASK_ID" in job["env_names"], step
        command = job["command"][-1]      # node 0 runs the control task (SubmitJob's nodeOverrides)
        assert "--split-index 0" in command and "ubf_control" in command, command[-600:]
    plain = [j for j in jobs if j["step"] not in NODE_STEPS]
    assert plain and all(j["job_type"] == "container" and j["num_nodes"] == 1 for j in plain)
    assert {"train_generator", "join_generator_nodes", "train_policy", "join_policy_nodes", "end"} <= {
        j["step"] for j in plain}

    # 2. the run: node 0's outputs came through the joins
    for step in NODE_STEPS:
        assert len(run["steps"][step]) == 1 and run["steps"][step][0]["successful"], run["steps"][step]
    assert run["generator_summaries"]["sso"]["processes"] == 1
    assert run["generator_summaries"]["sso"]["steps"] >= 1
    assert "adapter_model.safetensors" in run["policy_adapter_files"]["sso"]
    assert [r["arm"] for r in run["results"]] == ["sso"] and run["n_sso_pairs"] > 0

    # 3. checkpoints went to S3 under the control task's key (the key every node would restore)
    for step in NODE_STEPS:
        keys = _s3_keys(fake_aws, cloud_env, f"data/SSOMultiNodeFlow/{run['run_id']}/sso-checkpoints/{step}/")
        tasks = {k.split(f"/sso-checkpoints/{step}/")[1].split("/")[0] for k in keys}
        assert tasks == {t["id"] for t in run["steps"][step]}, (tasks, run["steps"][step])

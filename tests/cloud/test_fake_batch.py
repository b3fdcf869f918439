"""`run --with batch` end to end against the emulated AWS Batch, then `resume` after a failed job.

The real Metaflow Batch launcher submits every task as a Batch job to the emulation; each job runs
its container command as a local subprocess with the job's environment only (see
``fake_batch_server.py``), downloading the code package from the emulated S3 and exchanging
every artifact through it. The tiny model, CPU, a handful of queries: what is under test is the
plumbing, not the model.

- the run succeeds, and every job carried the image, queue, vCPU, memory, GPU, /dev/shm and
  timeout of its ``[resources.*]`` table (config values win over ``--with batch:image=...``;
  steps whose table sets no image keep the ``--with`` image);
- the judge, a small CPU job, talks to an OpenAI-compatible server that rejects any other key:
  the key reaches the remote task only through ``@secrets`` (the emulated Secrets Manager); it is
  in no job's environment, although the launching shell has it exported;
- a job that fails (the flow's ``SSO_FAIL_AT_STEP`` hook, switched on in the emulated container;
  ``end``, the cheapest step to re-run) fails the run; ``resume --with batch`` clones every
  finished task and re-runs only the rest, again as Batch jobs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cloudkit import API_KEY_VALUE, SECRET_ID, read_jobs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from judge_server import JudgeServer  # noqa: E402

pytestmark = [pytest.mark.cloud, pytest.mark.slow, pytest.mark.timeout(900)]

DRIVER = str(Path(__file__).with_name("batch_driver.py"))
WITH_IMAGE = "example.invalid/sso-flow:with-flag"
GPU_IMAGE = "example.invalid/sso-flow:gpu-from-config"
STEP_TABLES = {"sample_responses": "sample", "generate_preferences": "sample",
               "generate_answers": "sample", "train_generator": "train", "train_policy": "train",
               "judge": "judge", "compare": "judge"}
RESOURCES = {
    "default": {"cpu": 1, "memory": 2048, "gpu": 0, "timeout_minutes": 20, "queue": "sso-cpu"},
    "sample": {"cpu": 2, "memory": 3072, "gpu": 1, "timeout_minutes": 20, "queue": "sso-gpu",
               "image": GPU_IMAGE, "shared_memory": 1024},
    "train": {"cpu": 2, "memory": 6144, "gpu": 1, "timeout_minutes": 20, "queue": "sso-gpu",
              "image": GPU_IMAGE, "shared_memory": 2048},
    "judge": {"cpu": 1, "memory": 1024, "gpu": 0, "timeout_minutes": 20, "queue": "sso-cpu"},
}


def _toml_value(v):
    return json.dumps(v) if isinstance(v, str) else str(v)


def _config(judge_url: str) -> str:
    lines = [
        "[model]", 'name = "sso-tiny"', 'device = "cpu"', "max_length = 384",   # catalogue prompts are ~310 tokens; never cut
        "[data]", "n_queries = 4", "n_eval = 2",
        "[sampling]", 'backend = "transformers"', "max_new_tokens = 8", "batch_size = 16",
        "shards = 2",
        "[generator]", "epochs = 1", "batch_size = 4",
        "[policy]", 'arms = ["sso"]', "epochs = 1", "batch_size = 4",
        "[eval]", "max_new_tokens = 8",
        "[judge]", 'backend = "openai"', f'base_url = "{judge_url}"', 'model = "judge-test"',
        f'secrets = ["aws-secrets-manager.{SECRET_ID}"]', "accuracy_pairs = 2",
        "max_retries = 1", "timeout_s = 20",
    ]
    for table, values in RESOURCES.items():
        lines.append(f"[resources.{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _drive(cloud_env, *args, timeout=600) -> dict:
    proc = subprocess.run([sys.executable, DRIVER, *args], env=cloud_env["env"],
                          cwd=cloud_env["root"], capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-6000:], proc.stderr[-6000:])
    return json.loads(lines[-1][len("RESULT "):])


def _step_of(job: dict) -> str:
    return job["step"]          # SubmitJob's "metaflow.step_name" parameter


def _check_job(job: dict) -> None:
    step = _step_of(job)
    table = STEP_TABLES.get(step, "default")
    want = RESOURCES[table]
    where = f"job for {step} ([resources.{table}])"
    assert job["image"] == want.get("image", WITH_IMAGE), where
    assert job["queue"] == want["queue"], where
    assert job["resources"]["VCPU"] == str(want["cpu"]), where
    assert job["resources"]["MEMORY"] == str(want["memory"]), where
    assert job["resources"].get("GPU", "0") == str(want["gpu"]), where
    assert (job["linux"] or {}).get("sharedMemorySize") == want.get("shared_memory"), where
    assert job["timeout"]["attemptDurationSeconds"] == 60 * want["timeout_minutes"], where
    # The key travels only through the secrets manager, never in a job's environment.
    assert API_KEY_VALUE not in job["env_blob"], where


def _s3_keys(fake_aws, cloud_env, prefix: str) -> list[str]:
    """The keys under ``<this test's S3 prefix>/<prefix>`` of the emulated bucket."""
    import boto3

    from cloudkit import BUCKET, aws_env

    s3 = boto3.client("s3", **{"endpoint_url": fake_aws["endpoint"], "region_name":
                               aws_env(fake_aws["endpoint"])["AWS_DEFAULT_REGION"],
                               "aws_access_key_id": "testing", "aws_secret_access_key": "testing"})
    full = f"{cloud_env['root'].name}/{prefix}"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=full)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_run_with_batch_then_resume(fake_aws, cloud_env):
    workdir = Path(fake_aws["workdir"])
    (workdir / "jobs.jsonl").unlink(missing_ok=True)
    with JudgeServer(require_key=API_KEY_VALUE) as judge:
        config = cloud_env["root"] / "batch-tiny.toml"
        config.write_text(_config(judge.url))

        # 1. a run whose last job (`end`) fails (the switch is on inside the emulated containers only)
        (workdir / "control.json").write_text(json.dumps({"extra_env": {"SSO_FAIL_AT_STEP": "end"}}))
        try:
            failed = _drive(cloud_env, "run", str(config), f"batch:image={WITH_IMAGE}")
        finally:
            (workdir / "control.json").unlink()
        assert failed["status"] == "failed", failed
        first_jobs = read_jobs(fake_aws)
        steps_run = {_step_of(j) for j in first_jobs}
        assert {"start", "sample_responses", "train_generator", "train_policy", "judge",
                "compare", "end"} <= steps_run, steps_run
        assert all(j["exit_code"] == 0 for j in first_jobs if _step_of(j) != "end")
        assert [j["exit_code"] for j in first_jobs if _step_of(j) == "end"] == [1]   # no @retry
        for job in first_jobs:
            _check_job(job)
        assert judge.requests > 0            # the judge got the key from the secrets manager
        # every answer is in the S3 datastore's judge cache (what a retried job on a new container reads)
        cached = _s3_keys(fake_aws, cloud_env, "metaflow/SSOFlow/sso-cache/judge/")
        assert len(cached) == judge.requests and all(k.endswith(".json") for k in cached)
        assert len([j for j in first_jobs if _step_of(j) == "sample_responses"]) == 2

        # 2. resume: every finished task is cloned, only `end` runs again, as a Batch job
        resumed = _drive(cloud_env, "resume", failed["run_id"], f"batch:image={WITH_IMAGE}")
    assert resumed["status"] == "successful" and resumed["successful"], resumed
    resume_jobs = read_jobs(fake_aws)[len(first_jobs):]
    assert [_step_of(j) for j in resume_jobs] == ["end"]
    assert all(j["exit_code"] == 0 for j in resume_jobs)
    for job in resume_jobs:
        _check_job(job)
    steps = resumed["steps"]
    for step in ("start", "sample_responses", "train_generator", "train_policy", "judge", "compare"):
        assert all(t["origin"] and t["origin"].startswith(f"SSOFlow/{failed['run_id']}/")
                   for t in steps[step]), (step, steps[step])
    assert [t["origin"] for t in steps["end"]] == [None]

    # 3. the artifacts made it through the (emulated) S3 datastore
    assert [r["arm"] for r in resumed["results"]] == ["sso"]
    assert resumed["n_sso_pairs"] > 0
    assert "adapter_model.safetensors" in resumed["policy_adapter_files"]["sso"]
    assert resumed["judge_usage"]["requests"] > 0

    # 4. the exports `end` wrote inside its container are gone with it; the launching side
    #    re-creates them from the datastore
    out = cloud_env["root"] / "export"
    proc = subprocess.run([sys.executable, "-m", "sso", "export", resumed["run_id"], str(out), "--no-cards"],
                          env=cloud_env["env"], cwd=cloud_env["root"], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "results.csv").is_file()
    assert any(p.name == "adapter_model.safetensors" for p in out.rglob("*"))

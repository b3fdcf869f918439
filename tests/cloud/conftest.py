"""Fixtures of the cloud tests: a running emulated AWS and a Metaflow environment pointed at it.

See cloudkit.py for what the emulation is and why Metaflow only runs in child processes here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Without the cloud extra the directory is skipped, except in CI (CI=1/true), where a missing
# extra must fail loudly instead of silently dropping the cloud tests.
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    import boto3  # noqa: F401
    import moto  # noqa: F401
else:
    pytest.importorskip("moto", reason="cloud tests need the cloud extra: pip install -e '.[test,cloud]'")
    pytest.importorskip("boto3", reason="cloud tests need the cloud extra: pip install -e '.[test,cloud]'")

from cloudkit import (  # noqa: E402
    API_KEY_VALUE, BUCKET, REPO, ROLE, aws_env, setup_aws, free_port,
)


@pytest.fixture(scope="session")
def fake_aws(tmp_path_factory):
    """A running emulated AWS: its endpoint, its work dir (jobs.jsonl, control.json) and a client."""
    workdir = tmp_path_factory.mktemp("fake-aws")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fake_batch_server.py")),
         "--port", str(port), "--workdir", str(workdir)],
        env={**os.environ, **aws_env(endpoint)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake AWS did not start: {(workdir / 'server.log').read_text()}")
                time.sleep(0.2)
        setup_aws(endpoint)
        yield {"endpoint": endpoint, "workdir": workdir, "port": port}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        log.close()


@pytest.fixture
def cloud_env(fake_aws, tmp_path):
    """Environment for a Metaflow child process: S3 datastore and Batch on the emulation.

    ``root`` is the process's cwd (local metadata, cards). The judge's API key is exported here,
    as a user launching a run would have it, so tests can prove it never reaches a spec or job.
    """
    endpoint = fake_aws["endpoint"]
    home = tmp_path / "mfhome"
    home.mkdir()
    prefix = f"s3://{BUCKET}/{tmp_path.name}"
    env = {
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": str(tmp_path), "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
        "METAFLOW_USER": "ci", "METAFLOW_HOME": str(home),
        "METAFLOW_CLIENT_CACHE_PATH": str(tmp_path / "client-cache"),
        "METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DATASTORE_SYSROOT_S3": f"{prefix}/metaflow",
        "METAFLOW_DATATOOLS_S3ROOT": f"{prefix}/data",
        "METAFLOW_CARD_S3ROOT": f"{prefix}/cards",
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
        "METAFLOW_S3_RETRY_COUNT": "1",
        "METAFLOW_BATCH_JOB_QUEUE": "default-queue",
        "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": ROLE,
        "METAFLOW_SFN_IAM_ROLE": ROLE,
        "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE": ROLE,
        "METAFLOW_SFN_DYNAMO_DB_TABLE": "sso-sfn",
        "METAFLOW_KUBERNETES_NAMESPACE": "default",
        "METAFLOW_DEFAULT_SECRETS_BACKEND_TYPE": "aws-secrets-manager",
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "SSO_CACHE_DIR": str(tmp_path / "sso-cache"),
        "OPENAI_API_KEY": API_KEY_VALUE,
        **aws_env(endpoint),
    }
    return {"env": env, "root": tmp_path}

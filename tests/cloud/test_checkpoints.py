"""``@datastore_checkpoints``: a retried attempt continues from the last checkpoint of the failed one.

A toy flow stands in for the trainer (which writes ``step-NNNNNNNN/`` directories atomically, the
same layout): attempt 0 writes two checkpoints and crashes, attempt 1 must find the second one.
With the S3 datastore (the emulated S3 here) every attempt starts in a fresh, empty scratch
directory, as a retried Batch job does in a new container, so the checkpoint can only come back
through S3; with the local datastore it stays on the machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloudkit import REPO

pytestmark = [pytest.mark.cloud, pytest.mark.timeout(300)]

TOY_FLOW = '''
import os, shutil, time
from metaflow import FlowSpec, current, retry, step
from sso_checkpoints import CHECKPOINT_ENV, datastore_checkpoints


class CkptFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @datastore_checkpoints(interval=0.2)
    @retry(times=1, minutes_between_retries=0)
    @step
    def train(self):
        root = os.environ[CHECKPOINT_ENV]
        found = sorted(n for n in os.listdir(root) if n.startswith("step-"))
        first = int(found[-1].split("-")[1]) + 1 if found else 1
        print(f"ATTEMPT {current.retry_count} DIR {root} FOUND {found}")
        for i in range(first, 5):
            tmp = os.path.join(root, ".tmp-%d" % i)
            os.makedirs(os.path.join(tmp, "adapter"))
            with open(os.path.join(tmp, "state.pt"), "w") as fh:
                fh.write(str(i))
            with open(os.path.join(tmp, "adapter", "weights.bin"), "wb") as fh:
                fh.write(os.urandom(1000))
            os.replace(tmp, os.path.join(root, "step-%08d" % i))
            for old in os.listdir(root):        # keep the newest only, as sso.training.checkpoints does
                if old.startswith("step-") and old != "step-%08d" % i:
                    shutil.rmtree(os.path.join(root, old))
            if current.retry_count == 0 and i == 2:
                time.sleep(0.5)
                raise RuntimeError("crash after checkpoint 2")
        self.resumed_from = found
        self.dirs = [root]
        self.next(self.end)

    @step
    def end(self):
        print(f"RESUMED_FROM {self.resumed_from}")


if __name__ == "__main__":
    CkptFlow()
'''


@pytest.fixture
def toy_flow(tmp_path):
    flow_dir = tmp_path / "toyflow"
    flow_dir.mkdir()
    for module in ("sso_checkpoints.py", "sso_nodes.py"):    # the decorator and what it imports
        shutil.copy(REPO / "flows" / module, flow_dir)
    (flow_dir / "ckpt_flow.py").write_text(TOY_FLOW)
    return flow_dir / "ckpt_flow.py"


def _run(flow: Path, env: dict, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, str(flow), "run"], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def test_retry_resumes_from_s3_checkpoint(toy_flow, cloud_env):
    out = _run(toy_flow, cloud_env["env"], cloud_env["root"])
    assert "ATTEMPT 0 DIR" in out and "crash after checkpoint 2" in out
    assert "ATTEMPT 1 DIR" in out and "FOUND ['step-00000002']" in out
    assert "RESUMED_FROM ['step-00000002']" in out
    dirs = [line.split(" DIR ")[1].split()[0] for line in out.splitlines() if " DIR " in line]
    assert len(set(dirs)) == 2            # a fresh directory per attempt: it came back through S3
    assert "@datastore_checkpoints: s3://" in out


def test_retry_resumes_from_local_checkpoint(toy_flow, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "METAFLOW_USER": "ci", "METAFLOW_HOME": str(tmp_path / "mfhome"),
           "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DEFAULT_METADATA": "local",
           "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    out = _run(toy_flow, env, tmp_path)
    assert "FOUND ['step-00000002']" in out and "RESUMED_FROM ['step-00000002']" in out
    assert not list((tmp_path / "sso-checkpoints").rglob("step-*"))   # cleaned up after success

"""A local stand-in for AWS (S3, IAM, Secrets Manager, EC2, Batch, Step Functions, DynamoDB).

    python tests/cloud/fake_batch_server.py --port PORT --workdir DIR

It is moto's server on 127.0.0.1 with one change: AWS Batch's job runner. Instead of starting a
Docker container, each submitted job's container ``command`` runs as a local subprocess with the
job's ``environment`` plus what the container would get from Batch and the image:

- the ``AWS_BATCH_*`` variables Batch sets in every container (Metaflow's @batch reads them);
- from "the image" (see Dockerfile): ``python`` on PATH (this interpreter's directory first),
  ``METAFLOW_SKIP_INSTALL_DEPENDENCIES=1``, an empty HOME and working directory per job (so nothing
  leaks between "containers" through the local disk: no shared caches, no checkout);
- from "the IAM role" and "the network": fake credentials and the moto endpoint.

Nothing else of the launching shell reaches a job. ``DIR/jobs.jsonl`` gets one line per job (name,
queue, image, resource requirements, timeout, the job environment as submitted, exit code) for tests to assert
on; ``DIR/jobs/<id>.log`` keeps each job's output. ``DIR/control.json``, if present, is read at each
job start: ``{"extra_env": {...}}`` is added to the job's environment (the tests' failure switch,
standing in for a broken job). The server stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime

_LOCK = threading.Lock()


def _requirements(job) -> dict[str, str]:
    """Effective resource requirements: job-definition values overridden by SubmitJob's."""
    reqs = {r["type"]: r["value"] for r in
            (job.job_definition.container_properties or {}).get("resourceRequirements", [])}
    reqs.update({r["type"]: r["value"] for r in job.container_overrides.get("resourceRequirements", [])})
    return reqs


def make_fake_run(workdir: str, port: int):
    from moto.batch.models import JobStatus

    endpoint = f"http://127.0.0.1:{port}"
    python_dir = os.path.dirname(sys.executable)
    log_path = os.path.join(workdir, "jobs.jsonl")
    os.makedirs(os.path.join(workdir, "jobs"), exist_ok=True)

    def fake_run(self) -> None:
        try:
            for state in (JobStatus.SUBMITTED, JobStatus.PENDING, JobStatus.RUNNABLE, JobStatus.STARTING):
                self.advance()
                while self.status == state and not self.stop:
                    time.sleep(0.05)
            self.job_started_at = datetime.now()
            self._start_attempt()
            control = {}
            control_path = os.path.join(workdir, "control.json")
            if os.path.exists(control_path):
                with open(control_path) as fh:
                    control = json.load(fh)
            job_env = {e["name"]: e["value"] for e in self._get_container_property("environment", [])}
            home = tempfile.mkdtemp(prefix="job-", dir=os.path.join(workdir, "jobs"))
            env = {
                # the image
                "PATH": f"{python_dir}:/usr/local/bin:/usr/bin:/bin",
                "HOME": home, "LANG": "C.UTF-8", "METAFLOW_SKIP_INSTALL_DEPENDENCIES": "1",
                "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                # the IAM role and the network
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": endpoint,
                # AWS Batch
                "AWS_BATCH_JOB_ID": self.job_id, "AWS_BATCH_JOB_ATTEMPT": "1",
                "AWS_BATCH_CE_NAME": "fake-ce", "AWS_BATCH_JQ_NAME": self.job_queue.name,
                "AWS_EXECUTION_ENV": "AWS_ECS_EC2",
                **job_env,
                **control.get("extra_env", {}),
            }
            cmd = self._get_container_property("command", [])
            started = time.monotonic()
            with open(os.path.join(workdir, "jobs", f"{self.job_id}.log"), "wb") as out:
                proc = subprocess.Popen(cmd, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                while proc.poll() is None:
                    if self.stop:       # TerminateJob / CancelJob
                        os.killpg(proc.pid, signal.SIGKILL)
                    time.sleep(0.1)
            record = {
                "job_id": self.job_id, "job_name": self.job_name, "queue": self.job_queue.name,
                "step": (self.parameters or {}).get("metaflow.step_name"),
                "image": (self.job_definition.container_properties or {}).get("image"),
                "resources": _requirements(self),
                "timeout": self.timeout,
                "linux": (self.job_definition.container_properties or {}).get("linuxParameters"),
                "env_names": sorted(job_env),
                "command": cmd, "exit_code": proc.returncode,
                "seconds": round(time.monotonic() - started, 1),
            }
            # The whole job environment as Batch received it, so tests can prove what is *not* in it.
            record["env_blob"] = json.dumps(job_env, sort_keys=True)
            with _LOCK, open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self.exit_code = proc.returncode
            self._mark_stopped(success=proc.returncode == 0)
        except Exception as exc:  # never leave a job hanging in RUNNING
            print(f"fake batch: job {self.job_id} crashed the runner: {exc!r}", file=sys.stderr)
            self._mark_stopped(success=False)

    return fake_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()

    from moto.batch import models as batch_models
    from moto.server import ThreadedMotoServer

    batch_models.Job.run = make_fake_run(args.workdir, args.port)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"fake AWS on http://127.0.0.1:{args.port}", flush=True)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()

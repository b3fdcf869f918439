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

Nothing else of the launching shell reaches a job.

A multi-node parallel job (``type = "multinode"``: Metaflow's ``@parallel`` steps under ``@batch``)
runs ``numNodes`` containers at once, one per node, each with the container of its node range in
the job definition as overridden by SubmitJob's ``nodeOverrides`` (which moto itself drops), and
with what Batch gives each node: ``AWS_BATCH_JOB_ID`` = ``<job id>#<node>``,
``AWS_BATCH_JOB_NODE_INDEX``, ``AWS_BATCH_JOB_NUM_NODES``, ``AWS_BATCH_JOB_MAIN_NODE_INDEX`` and, on
the nodes other than the main node, ``AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS`` (127.0.0.1:
every "node" is this machine). The job ends when every node has exited, with the main node's exit
code (as Batch decides a multi-node job by its main node); DescribeJobs answers the nodes as
``<job id>#<node>`` too (Metaflow polls them while the job starts).

``DIR/jobs.jsonl`` gets one line per job, or per node of a multi-node job (name, queue, image,
resource requirements, timeout, node index and count, the job environment as submitted, exit
code) for tests to assert on; ``DIR/jobs/<id>.log`` keeps each job's output (``<id>-node<i>.log``
for node i of a multi-node job). ``DIR/control.json``, if present, is read at each job start:
``{"extra_env": {...}}`` is added to the job's environment (the tests' failure switch, standing
in for a broken job). The server stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import copy
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


_SUBMIT = threading.local()    # SubmitJob's nodeOverrides, from the request to the Job it creates


def _merged(container: dict, overrides: dict) -> dict:
    """A container's properties with a SubmitJob override applied (environment and resource
    requirements merged by name/type, the rest replaced), as Batch merges them."""
    out = copy.deepcopy(container or {})
    for key, value in (overrides or {}).items():
        if key in ("environment", "resourceRequirements"):
            field = "name" if key == "environment" else "type"
            merged = {e[field]: e for e in out.get(key, [])}
            merged.update({e[field]: e for e in value})
            out[key] = list(merged.values())
        else:
            out[key] = value
    return out


def _node_range(target: str, num_nodes: int) -> range:
    start, sep, end = target.partition(":")
    if not sep:
        return range(int(start), int(start) + 1)
    return range(int(start or 0), int(end) + 1 if end else num_nodes)


def containers_of(job) -> list[dict]:
    """The container each node of ``job`` runs (one for a container job), overrides applied."""
    if job.job_definition.type != "multinode":
        return [_merged(job.job_definition.container_properties, job.container_overrides)]
    props = job.job_definition.node_properties
    nodes: list[dict] = [{} for _ in range(props["numNodes"])]
    for rng in props["nodeRangeProperties"]:
        for i in _node_range(rng["targetNodes"], len(nodes)):
            nodes[i] = copy.deepcopy(rng["container"])
    for override in (getattr(job, "node_overrides", None) or {}).get("nodePropertyOverrides", []):
        for i in _node_range(override["targetNodes"], len(nodes)):
            nodes[i] = _merged(nodes[i], override.get("containerOverrides", {}))
    return nodes


def _node_env(job, node: int, num_nodes: int) -> dict[str, str]:
    """What Batch sets in a container besides the job's environment: its job id, and a node's place."""
    if job.job_definition.type != "multinode":
        return {"AWS_BATCH_JOB_ID": job.job_id}
    env = {"AWS_BATCH_JOB_ID": f"{job.job_id}#{node}", "AWS_BATCH_JOB_NODE_INDEX": str(node),
           "AWS_BATCH_JOB_NUM_NODES": str(num_nodes), "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0"}
    if node:
        env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = "127.0.0.1"
    return env


def _describe_node(job, node: int) -> dict:
    """DescribeJobs' answer for node ``node`` of a multi-node job (``<job id>#<node>``)."""
    status = job.node_status[node] if getattr(job, "node_status", None) else job.status
    out = {"jobId": f"{job.job_id}#{node}", "jobArn": f"{job.arn}#{node}", "jobName": job.job_name,
           "status": status, "jobQueue": job.job_queue.arn, "jobDefinition": job.job_definition.arn,
           "createdAt": 0, "parameters": job.parameters, "attempts": [],
           "nodeDetails": {"nodeIndex": node, "isMainNode": node == 0}}
    if getattr(job, "node_exit", None) and job.node_exit[node] is not None:
        out["container"] = {"exitCode": job.node_exit[node]}
    return out


def patch_moto(batch_models, batch_responses) -> None:
    """What moto's Batch lacks for multi-node jobs: SubmitJob's nodeOverrides, DescribeJobs of a
    node (``<job id>#<node>``), and a multi-node job's exit code where Metaflow reads it (the
    attempt's container: a multi-node job has no container of its own)."""
    responses = batch_responses.BatchResponse
    submit_name = "submit_job" if hasattr(responses, "submit_job") else "submitjob"   # renamed in moto 5.2.6
    submit, init = getattr(responses, submit_name), batch_models.Job.__init__
    describe_jobs, describe = batch_models.BatchBackend.describe_jobs, batch_models.Job.describe

    def submitjob(self):
        _SUBMIT.node_overrides = self._get_param("nodeOverrides")
        try:
            return submit(self)
        finally:
            _SUBMIT.node_overrides = None

    def job_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.node_overrides = getattr(_SUBMIT, "node_overrides", None)

    def backend_describe_jobs(self, jobs):
        nodes = [j for j in jobs or [] if "#" in j]
        out = describe_jobs(self, [j for j in jobs if "#" not in j]) if len(nodes) < len(jobs or [None]) else []
        for name in nodes:
            parent, _, node = name.rpartition("#")
            if parent in self._jobs:
                out.append(_describe_node(self._jobs[parent], int(node)))
        return out

    def job_describe(self):
        out = describe(self)
        if self.job_definition.type == "multinode":
            out.pop("container", None)
        return out

    setattr(responses, submit_name, submitjob)
    batch_models.Job.__init__ = job_init
    batch_models.BatchBackend.describe_jobs = backend_describe_jobs
    batch_models.Job.describe = job_describe


def make_fake_run(workdir: str, port: int):
    from moto.batch.models import JobStatus

    endpoint = f"http://127.0.0.1:{port}"
    python_dir = os.path.dirname(sys.executable)
    log_path = os.path.join(workdir, "jobs.jsonl")
    os.makedirs(os.path.join(workdir, "jobs"), exist_ok=True)

    def start_container(job, node: int, num_nodes: int, container: dict, control: dict):
        """One container of ``job`` (node ``node``) as a local process: (process, its job environment)."""
        job_env = {e["name"]: e["value"] for e in container.get("environment", [])}
        job_env.update(_node_env(job, node, num_nodes))
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
            "AWS_BATCH_JOB_ATTEMPT": "1", "AWS_BATCH_CE_NAME": "fake-ce",
            "AWS_BATCH_JQ_NAME": job.job_queue.name, "AWS_EXECUTION_ENV": "AWS_ECS_EC2",
            **job_env,
            **control.get("extra_env", {}),
        }
        out = open(os.path.join(workdir, "jobs", f"{job_env['AWS_BATCH_JOB_ID'].replace('#', '-node')}.log"), "wb")
        proc = subprocess.Popen(container.get("command", []), env=env, cwd=home, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        return proc, job_env

    def record(job, node: int, num_nodes: int, container: dict, job_env: dict, code: int, seconds: float):
        return {
            "job_id": job_env["AWS_BATCH_JOB_ID"], "job_name": job.job_name, "queue": job.job_queue.name,
            "step": (job.parameters or {}).get("metaflow.step_name"),
            "job_type": job.job_definition.type, "node_index": node, "num_nodes": num_nodes,
            "image": container.get("image"),
            "resources": {r["type"]: r["value"] for r in container.get("resourceRequirements", [])},
            "timeout": job.timeout,
            "linux": container.get("linuxParameters"),
            "env_names": sorted(job_env),
            "command": container.get("command", []), "exit_code": code, "seconds": round(seconds, 1),
            # The whole job environment as Batch received it, so tests can prove what is *not* in it.
            "env_blob": json.dumps(job_env, sort_keys=True),
        }

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
            containers = containers_of(self)
            n = len(containers)
            self.node_status, self.node_exit = ["RUNNING"] * n, [None] * n
            started = time.monotonic()
            nodes = [start_container(self, i, n, c, control) for i, c in enumerate(containers)]
            seconds = [0.0] * n
            while any(code is None for code in self.node_exit):
                for i, (proc, _) in enumerate(nodes):
                    if self.stop and proc.poll() is None:      # TerminateJob / CancelJob
                        os.killpg(proc.pid, signal.SIGKILL)
                    if self.node_exit[i] is None and proc.poll() is not None:
                        self.node_exit[i], seconds[i] = proc.returncode, time.monotonic() - started
                        self.node_status[i] = "SUCCEEDED" if proc.returncode == 0 else "FAILED"
                time.sleep(0.1)
            with _LOCK, open(log_path, "a") as fh:
                for i, ((_, job_env), container) in enumerate(zip(nodes, containers)):
                    fh.write(json.dumps(record(self, i, n, container, job_env, self.node_exit[i], seconds[i])) + "\n")
            self.exit_code = self.node_exit[0]             # Batch decides a multi-node job by its main node
            self.latest_attempt["container"]["exitCode"] = self.exit_code
            self._mark_stopped(success=self.exit_code == 0)
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
    from moto.batch import responses as batch_responses
    from moto.server import ThreadedMotoServer

    patch_moto(batch_models, batch_responses)
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

"""The training entry point run under torchrun: a pickled job in, a pickled TrainResult out.

    python -m torch.distributed.run --nproc_per_node N -m sso.training.launch \\
        --input job.pkl --output result.pkl

A job (:func:`make_job`) is a dict: ``objective`` (dpo | sso | online_sso), ``table`` (the pairs or
triples DataFrame), ``train_config`` / ``model_config`` (plain dicts, or the dataclasses),
``config_class`` (train | policy | generator: which dataclass the train config is),
``model_path``, ``seed`` and optionally ``checkpoint_dir``, ``init_adapter``, ``resume_dirs``,
``micro_split``.
Every rank starts the process group (:func:`sso.training.distributed.init_distributed`) and runs
the trainer; rank 0 writes the result to ``--output``; with ``--rank-outputs`` each other rank
writes its own (history only) to ``<output>.rank<r>``. :func:`torchrun_job` does the whole round
trip from Python (writes the job, runs torchrun, reads the result).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from typing import Any, Sequence

from sso.config import GeneratorConfig, ModelConfig, PolicyConfig, TrainConfig
from sso.config_rules import build_table, to_plain
from sso.training.distributed import init_distributed, teardown, torchrun_command
from sso.training.memory import RestartWithSplit

#: a worker's exit status after writing ``<output>.restart`` (out of memory: restart the job)
RESTART_EXIT = 75

CONFIG_CLASSES = {"train": (TrainConfig, "policy"), "policy": (PolicyConfig, "policy"),
                  "generator": (GeneratorConfig, "generator")}
OBJECTIVES = ("dpo", "sso", "online_sso")


def make_job(objective: str, table, cfg, model_cfg, model_path: str, seed: int, **options: Any) -> dict:
    """A picklable job for :func:`run_job` (configs stored as plain dicts)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    kind = next((k for k, (cls, _) in CONFIG_CLASSES.items() if type(cfg) is cls), "train")
    return {"objective": objective, "table": table, "train_config": to_plain(cfg), "config_class": kind,
            "model_config": to_plain(model_cfg), "model_path": model_path, "seed": seed, **options}


def _config(value, cls, path: str):
    return value if dataclasses.is_dataclass(value) else build_table(cls, value, path)


def run_job(job: dict):
    """Run the job's trainer in this process (distributed when the process group is up)."""
    from sso.training import trainer

    cls, path = CONFIG_CLASSES[job.get("config_class", "train")]
    cfg = _config(job["train_config"], cls, path)
    model_cfg = _config(job["model_config"], ModelConfig, "model")
    fn = {"dpo": trainer.train_dpo, "sso": trainer.train_sso, "online_sso": trainer.train_online}[job["objective"]]
    return fn(job["model_path"], job["table"], cfg, model_cfg, seed=job["seed"],
              checkpoint_dir=job.get("checkpoint_dir"), init_adapter=job.get("init_adapter"),
              progress=job.get("progress", False), resume_dirs=tuple(job.get("resume_dirs", ())),
              micro_split=job.get("micro_split", 1))


def _write(obj, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one training job (under torchrun)")
    parser.add_argument("--input", required=True, help="pickled job (make_job)")
    parser.add_argument("--output", required=True, help="rank 0 writes the pickled TrainResult here")
    parser.add_argument("--rank-outputs", action="store_true", help="other ranks write <output>.rank<r>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank" + os.environ.get("RANK", "0")
                        + " %(name)s %(levelname)s %(message)s")
    with open(args.input, "rb") as fh:
        job = pickle.load(fh)
    info = init_distributed()
    try:
        result = run_job(job)
        if info.is_main:
            _write(result, args.output)
        elif args.rank_outputs:
            _write(result, f"{args.output}.rank{info.rank}")
    except RestartWithSplit as exc:     # out of memory: torchrun_job restarts the job with exc.split
        _write(exc.split, f"{args.output}.restart")
        exit_now(RESTART_EXIT)          # no teardown: the other ranks wait in a collective; torchrun stops them
    finally:
        teardown()
    return 0


def torchrun_job(job: dict, nproc: int, workdir: str | None = None, *, rank_outputs: bool = False,
                 master_port: int = 29500, timeout_s: float | None = None, env: dict | None = None,
                 launcher=None):
    """Run ``job`` on ``nproc`` local processes through torchrun and return rank 0's TrainResult
    (with ``rank_outputs``: the list of every rank's result). RuntimeError with the output tail
    when torchrun fails. On one node a job that ran out of memory is started again with halved
    micro-batches (:func:`_run_restarting`; the summary counts ``oom_restarts``).

    ``launcher(args, nproc)``, when given, starts torchrun itself with the entry point's ``args``
    (on every node of a multi-node job, with that node's ``--nnodes/--node_rank/--master_addr``:
    ``NodeLauncher`` of ``flows/sso_nodes.py``) and returns whether this node holds rank 0; on the
    other nodes the result is None (rank 0 alone writes one)."""
    with tempfile.TemporaryDirectory(prefix="sso-torchrun-", dir=workdir) as tmp:
        job_path, out = os.path.join(tmp, "job.pkl"), os.path.join(tmp, "result.pkl")
        _write(job, job_path)
        args = ["--input", job_path, "--output", out] + (["--rank-outputs"] if rank_outputs else [])
        restarts = 0                  # after out-of-memory errors (one node: :func:`_run_restarting`)
        if launcher is not None:
            if not launcher(args, nproc):
                return None
        else:
            restarts = _run_restarting(job, job_path, out, torchrun_command(nproc, args, master_port=master_port),
                                       timeout_s, {**os.environ, **(env or {})})
        paths = [out] + ([f"{out}.rank{r}" for r in range(1, nproc)] if rank_outputs else [])
        results = []
        for path in paths:
            with open(path, "rb") as fh:
                results.append(pickle.load(fh))
    if restarts:
        results[0].summary["oom_restarts"] = restarts
    return results if rank_outputs else results[0]


def _run_restarting(job: dict, job_path: str, out: str, cmd: list[str], timeout_s, env) -> int:
    """Run torchrun until the job ends; after a rank ran out of memory (it wrote ``<out>.restart``:
    :class:`sso.training.memory.RestartWithSplit`), again with the halved micro-batches, from the
    job's last checkpoint when it has a ``checkpoint_dir``. Returns the number of restarts;
    RuntimeError with the output tail when torchrun fails otherwise."""
    log = logging.getLogger("sso.training")
    restarts = 0
    while True:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        if proc.returncode == 0:
            return restarts
        if not os.path.exists(f"{out}.restart"):
            raise RuntimeError(f"torchrun exited with {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
        with open(f"{out}.restart", "rb") as fh:
            job = {**job, "micro_split": pickle.load(fh)}
        os.remove(f"{out}.restart")
        restarts += 1
        log.warning("train %s: out of memory under torchrun; restarting the job with every micro-batch in %d "
                    "pieces (same rows per step, more accumulation)%s", job["objective"], job["micro_split"],
                    ", from its last checkpoint" if job.get("checkpoint_dir") else ", from the start (no checkpoint_dir)")
        _write(job, job_path)


def free_port() -> int:
    """A free local TCP port for torchrun's rendezvous (parallel training tasks on one machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_processes(resources) -> int:
    """Data-parallel processes of a training step: ``processes``, else one per GPU, else one."""
    return resources.processes or max(resources.gpu, 1)


def train_job(objective: str, model_path: str, table, cfg, model_cfg, *, seed: int, nproc: int = 1,
              on_log=None, launcher=None, **options: Any):
    """Train in this process (``nproc`` 1) or on ``nproc`` local processes under torchrun (DDP:
    gloo on CPU, nccl on GPUs); the TrainResult of rank 0 either way. Under torchrun ``on_log`` is
    called with every history row once the job is done (the ranks run in other processes).

    With a ``launcher`` (one node of a multi-node job, :func:`torchrun_job`; its ``nodes``
    attribute: how many) the job always goes through torchrun, ``nproc`` processes on each node,
    and the nodes other than rank 0's get None."""
    from sso.training import trainer

    fn = {"dpo": trainer.train_dpo, "sso": trainer.train_sso, "online_sso": trainer.train_online}[objective]
    nodes = getattr(launcher, "nodes", 1)
    if nproc <= 1 and launcher is None:
        return fn(model_path, table, cfg, model_cfg, seed=seed, on_log=on_log, **options)
    log = logging.getLogger("sso.training")
    log.info("train %s on %d node(s) x %d processes under torchrun", objective, nodes, nproc)
    options = {k: v for k, v in options.items() if k != "progress"}
    result = torchrun_job(make_job(objective, table, cfg, model_cfg, model_path, seed, **options), nproc,
                          master_port=free_port(), launcher=launcher)
    if result is None:
        return None
    for row in result.history.to_dict("records") if on_log is not None else ():
        on_log(row)
    result.summary["processes"] = nproc * nodes
    if nodes > 1:
        result.summary["nodes"] = nodes
    return result


def job_outputs(result) -> tuple:
    """(adapter, history, summary) of a :func:`train_job` result; all None on a node without rank 0."""
    return (None, None, None) if result is None else (result.adapter, result.history, result.summary)


def exit_now(code: int) -> None:
    """End a torchrun worker once its group is torn down and its outputs written, without the
    interpreter's shutdown: after FSDP2 collectives on gloo, that shutdown aborts the process
    now and then ("terminate called without an active exception", SIGABRT: measured in 4 of 20
    two-process runs here, 0 of 20 with this exit), which torchrun reports as a failed job."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())

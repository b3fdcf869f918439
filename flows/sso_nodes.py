"""Multi-node training steps (Metaflow ``@parallel`` + torchrun), Metaflow side: how a node starts
its share of the job, which node's outputs the join keeps, and which task's checkpoints the nodes
share.

A multi-node training step (``flows/sso_multinode_flow.py``) runs as ``[resources.train] nodes``
tasks, one per node (Metaflow's ``@parallel``: a control task, node 0, and workers; AWS Batch
multi-node parallel jobs, Kubernetes / Argo JobSets, local processes). Every node builds the same
training job from the same artifacts and starts ``torchrun --nnodes N --node_rank i
--master_addr <node 0> --nproc_per_node P -m sso.training.launch`` (:class:`NodeLauncher`), P =
:func:`sso.training.launch.train_processes` (one per GPU of ``[resources.train]``, or
``processes``). Global rank 0, on node 0, writes the result; the tasks of the other nodes store
None for every output and the join after the step keeps node 0's (:func:`node_zero`).

Why not the ``@torchrun`` decorator of metaflow-torchrun (0.2.2, the newest): with Metaflow 2.19 it
skips ``@parallel``'s own ``task_pre_step`` (a local run fails with "'TorchrunDecoratorParallel'
object has no attribute 'input_paths'"), its node barrier refuses the local datastore ("Torchrun
datastore does not support backend local"), and its barrier and node-status keys are per run and
step only, so the concurrent tasks of one step in a foreach (our generators, our arms) read each
other's. What it adds over the command above is that barrier and a node-health poller; torchrun's
static rendezvous already waits for every node (``--rdzv-timeout``) and a dead node breaks the
others' collectives.
"""

import os
import zlib

NODE_OUTPUT = "node_index"   # the artifact that tells the join which input was node 0


def parallel_nodes() -> tuple[int, int, str | None]:
    """(number of nodes, this node's index, the control task's id) of a ``@parallel`` task, as
    Metaflow sets them in the environment; (1, 0, None) elsewhere."""
    return (int(os.environ.get("MF_PARALLEL_NUM_NODES", "1")), int(os.environ.get("MF_PARALLEL_NODE_INDEX", "0")),
            os.environ.get("MF_PARALLEL_CONTROL_TASK_ID"))


class NodeLauncher:
    """``launcher`` of :func:`sso.training.launch.train_job` on one node: runs ``torchrun`` with
    this node's ``--nnodes/--node_rank`` and the rendezvous at node 0 (``MF_PARALLEL_MAIN_IP``)
    and says whether this node holds rank 0 (node 0 does). torchrun's output streams into the
    task's log; a failure on any node fails every node's torchrun (the rendezvous or the first
    collective breaks) and so every node's task.

    The rendezvous port is derived from the control task's pathspec, so that the nodes agree on it
    and two multi-node steps running at once on one machine (a local run's foreach over generators)
    do not collide."""

    def __init__(self, nodes: int, node_index: int, main_ip: str, key: str):
        self.nodes, self.node_index, self.main_ip = nodes, node_index, main_ip
        self.port = 20000 + zlib.crc32(key.encode()) % 20000

    def command(self, args, nproc: int) -> list[str]:
        from sso.training.distributed import torchrun_command

        return torchrun_command(nproc, list(args), nnodes=self.nodes, node_rank=self.node_index,
                                master_addr=self.main_ip, master_port=self.port)

    def __call__(self, args, nproc: int) -> bool:
        import subprocess

        print(f"node {self.node_index} of {self.nodes}: torchrun, {nproc} process(es) on this node, "
              f"rendezvous at {self.main_ip}:{self.port}", flush=True)
        code = subprocess.run(self.command(args, nproc)).returncode
        if code != 0:
            raise RuntimeError(f"torchrun on node {self.node_index} of {self.nodes} exited with {code} "
                               f"(its output is above; a failure on one node ends every node's torchrun)")
        return self.node_index == 0


def node_launcher():
    """The :class:`NodeLauncher` of this task when it is a node of a ``@parallel`` step, else None
    (the step trains in its own process, or under a local torchrun of its own)."""
    from metaflow import current

    if not getattr(current, "is_parallel", False):
        return None
    nodes, index, control = parallel_nodes()
    main_ip = os.environ.get("MF_PARALLEL_MAIN_IP", "127.0.0.1")
    return NodeLauncher(nodes, index, main_ip, f"{current.run_id}/{current.step_name}/{control or current.task_id}")


def node_zero(inputs):
    """The input of a join after a multi-node step that came from node 0 (the one with outputs)."""
    zero = [i for i in inputs if getattr(i, NODE_OUTPUT, 0) == 0]
    if len(zero) != 1:
        raise RuntimeError(f"expected exactly one node-0 task among {len(list(inputs))} inputs, found {len(zero)}")
    return zero[0]


def keep_node_zero(flow, inputs, outputs) -> None:
    """The join after a multi-node step: the artifacts every node shares, and node 0's ``outputs``
    (the other nodes stored None for them)."""
    flow.merge_artifacts(inputs, exclude=[NODE_OUTPUT, *outputs])
    zero = node_zero(inputs)
    for name in outputs:
        setattr(flow, name, getattr(zero, name))


def local_nodes_use_this_python() -> None:
    """Put this interpreter's directory first on PATH. A local run's ``@parallel`` control task
    starts the other nodes' tasks with the bare command ``python`` (Metaflow 2.19's local
    multi-node launcher asks the environment for an executable without a default), which outside
    an activated virtualenv is another interpreter, without metaflow; this makes it this one."""
    import sys

    here = os.path.dirname(sys.executable)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != here:
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")



def check_batch_metadata(nodes: int) -> None:
    """Refuse, in ``start``, multi-node training on AWS Batch with local metadata. Metaflow's Batch
    decorator makes node 0 of a multi-node job wait for the other nodes' tasks by looking them up
    in the metadata; local metadata is each container's own, so node 0 never sees them and the
    step fails after 600 s ("Batch secondary workers did not finish"), after all the sampling
    before it has been paid for. Kubernetes and Argo JobSets do not wait that way."""
    from sso.config import ConfigError

    if nodes > 1 and "AWS_BATCH_JOB_ID" in os.environ and \
            os.environ.get("METAFLOW_DEFAULT_METADATA", "local") == "local":
        raise ConfigError(
            f"[resources.train] nodes = {nodes} on AWS Batch needs the Metaflow metadata service "
            f"(METAFLOW_DEFAULT_METADATA=service, METAFLOW_SERVICE_URL): with local metadata node 0 of "
            f"a multi-node Batch job cannot see the other nodes' tasks and fails after 600 s. Deploy "
            f"the metadata service, or train on one node (nodes = 1, gpu = N), or use --with kubernetes")

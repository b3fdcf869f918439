"""Self-Steering Optimization with multi-node training: SSOFlow whose training steps run on
``[resources.train] nodes`` machines at once (Metaflow ``@parallel``, torchrun on every node).

    python flows/sso_multinode_flow.py --config cfg configs/X.toml run --with batch   # nodes > 1
    python flows/sso_multinode_flow.py --config cfg configs/X.toml argo-workflows create

Same DAG and artifacts as ``sso_flow.py``, except that each training step is split in three:

    train_generator       [foreach variant] picks the variant, starts ``nodes`` node tasks
    train_generator_nodes [@parallel, one task per node] torchrun on every node (``--nnodes``,
                          ``--node_rank``, rendezvous at node 0), ``nproc_per_node`` = the GPUs of
                          [resources.train] (or ``processes``); rank 0 (node 0) stores the outputs
    join_generator_nodes  keeps node 0's outputs
    split_preferences     then generate_preferences [foreach shard] as in SSOFlow
    train_policy          [foreach arm] picks the arm, starts the node tasks
    train_policy_nodes    [@parallel] the arm's policy, as above
    join_policy_nodes     keeps node 0's outputs, then generate_answers, judge, compare, end

Locally (``run`` without ``--with``) the nodes are processes on this machine (gloo on CPU): a
test of the wiring. AWS Batch runs them as a multi-node parallel job, Kubernetes and Argo
Workflows as a JobSet; AWS Step Functions refuses ``@parallel`` (deploy ``sso_flow.py`` there,
one node with ``gpu = N``). docs/scale.md says which scheduler runs what.
"""

import os

from sso_base import ROOT  # first: sso_base.py sets a Metaflow user and puts the repo on sys.path
from metaflow import card, package_sources, parallel, retry, step
from sso_flow import SSOFlow
import sso_arms  # noqa: E402  (flows/sso_arms.py: what each arm trains on, how, and at what cost)
from sso_checkpoints import datastore_checkpoints  # training checkpoints across retries and resume
from sso_decorators import compute, compute_defaults  # config-driven @resources; failure hooks for tests
from sso_nodes import NODE_OUTPUT, keep_node_zero, local_nodes_use_this_python, parallel_nodes  # torchrun per node

local_nodes_use_this_python()   # a local run's extra node tasks start as `python` (see sso_nodes.py)

cfg = SSOFlow.cfg   # the run's Config, for the step decorators below


@compute_defaults("cfg")   # [resources.default] for steps without @compute; @failure_point everywhere
@package_sources(
    [(os.path.join(ROOT, "sso"), "sso"), (os.path.join(ROOT, "steps"), "steps")],
    suffixes=[".py", ".jsonl", ".json", ".toml", ".jinja"],
)
class SSOMultiNodeFlow(SSOFlow):
    """SSOFlow with every training step on ``[resources.train] nodes`` nodes (DDP across them)."""

    MODES = ("offline",)
    MULTI_NODE = True

    @step
    def train_generator(self):
        """[foreach generator variant] One task per node of the generator's training."""
        self.generator = self.input
        self.next(self.train_generator_nodes, num_parallel=self.conf.resources.train.nodes)

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.train)
    @datastore_checkpoints   # the nodes share node 0's checkpoint directory (sso_checkpoints)
    @card(type="blank", id="training")
    @parallel   # one task per node; each starts torchrun (sso_nodes.NodeLauncher)
    @step
    def train_generator_nodes(self):
        """[@parallel] This node's share of the generator's SSO training (DDP over all nodes)."""
        from sso.arms import generator_config, plan_run
        from steps.train_generator import train_generator

        setattr(self, NODE_OUTPUT, parallel_nodes()[1])
        gen_cfg = generator_config(self.conf.generator, plan_run(self.conf).generators[self.generator])
        self.generator_adapter, self.generator_history, self.generator_summary = self.train(
            f"Generator {self.generator} (SSO loss)", gen_cfg, train_generator, self.generator, self.sso_triples)
        self.next(self.join_generator_nodes)

    @step
    def join_generator_nodes(self, inputs):
        """Node 0's generator (rank 0's outputs)."""
        keep_node_zero(self, inputs, PER_GENERATOR)
        self.next(self.split_preferences)

    @step
    def split_preferences(self):
        """One preference shard per sampling task (a join cannot also split)."""
        from sso.generation.shards import preference_shards

        self.pref_shards = preference_shards(self.shards)
        self.next(self.generate_preferences, foreach="pref_shards")

    @step
    def train_policy(self):
        """[foreach arm] One task per node of the arm's policy training."""
        self.arm = self.input
        self.next(self.train_policy_nodes, num_parallel=self.conf.resources.train.nodes)

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.train)
    @datastore_checkpoints   # the nodes share node 0's checkpoint directory (sso_checkpoints)
    @card(type="blank", id="training")
    @parallel   # one task per node; each starts torchrun (sso_nodes.NodeLauncher)
    @step
    def train_policy_nodes(self):
        """[@parallel] This node's share of the arm's policy training (DDP over all nodes)."""
        setattr(self, NODE_OUTPUT, parallel_nodes()[1])
        self.n_pairs = len(self.arm_pairs(self.arm))
        self.policy_adapter, self.policy_history, self.policy_summary = sso_arms.arm_training(self, self.arm)
        self.arm_info = sso_arms.arm_costs(self, self.arm) if self.policy_summary is not None else None
        self.next(self.join_policy_nodes)

    @step
    def join_policy_nodes(self, inputs):
        """Node 0's policy (rank 0's outputs)."""
        keep_node_zero(self, inputs, PER_POLICY)
        self.next(self.generate_answers)


PER_GENERATOR = ["generator_adapter", "generator_history", "generator_summary"]
PER_POLICY = ["policy_adapter", "policy_history", "policy_summary", "arm_info"]


if __name__ == "__main__":
    SSOMultiNodeFlow()

"""The steps every SSO flow shares: loading, principles, sampling, and the arms' policies, answers,
judging and results; the Metaflow layer's base class.

``flows/sso_flow.py`` (``SSOFlow``, the published SSO: generators, then DPO arms) and
``flows/sso_online_flow.py`` (``SSOOnlineFlow``, ``[run] mode = "online"`` / ``"iterative"``: a
self-looping step) each add the steps between ``join_samples`` and ``fan_out_arms``, starting with
their own ``route_training``. Two flows rather than one with a switch: AWS Step Functions refuses
any flow with a conditional (switch) step, and the online loop needs one (docs/algorithm.md).

The Metaflow layer is this file and its neighbours (``sso_arms.py``: what each arm trains on;
``sso_decorators.py``: config-driven step decorators; ``sso_checkpoints.py``: training checkpoints
in the datastore; ``sso_store.py``: caches in the datastore; ``sso_cards.py``: card components);
``sso/`` and ``steps/`` never import metaflow at module load. Each step hands plain data to one
``steps.<name>`` function and stores what it returns.
"""

import functools
import json
import os
import sys

# Metaflow refuses to run without a (non-root) user name, which is the norm in containers; fall
# back to a neutral one instead of failing the first run. An explicit METAFLOW_USER always wins.
if not any(os.environ.get(v, "root") != "root" for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")):
    os.environ["METAFLOW_USER"] = "sso"

from metaflow import Config, FlowSpec, Parameter, card, config_expr, current, retry, step
from sso_checkpoints import checkpoint_dirs, datastore_checkpoints  # training checkpoints across retries and resume
from sso_decorators import (  # config-driven @resources/@timeout/@secrets; failure hooks for tests
    compute, kill_hook, secrets_from_config)
from sso_store import shared_store, stored_model  # caches, and full models' files, in the flow's datastore
import sso_arms  # noqa: E402  (flows/sso_arms.py: what each arm trains on, how, and at what cost)
import sso_cards  # noqa: E402  (flows/sso_cards.py: sso.report.cards specs -> card components, live training card)
import sso_nodes  # noqa: E402  (flows/sso_nodes.py: multi-node training steps, @parallel + torchrun)

# Make `sso` and `steps` importable when the flow runs from a source checkout (locally, and on
# remote tasks where @package_sources ships them next to this file's directory).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sso.config import ConfigError, parse_config_text  # noqa: E402  (light: no torch/metaflow/vllm imports)

DEFAULT_CONFIG = os.path.join(ROOT, "configs", "tiny.toml")


DEBUG_ENV = "SSO_DEBUG"   # set to 1 for the full traceback of a user error


def parse_config(text: str) -> dict:
    """The ``Config`` parser: a bad config stops the run with our one-paragraph message (the key,
    what was expected), not Metaflow's "Internal error" banner and a traceback wall."""
    from metaflow.exception import MetaflowException

    try:
        return parse_config_text(text)
    except ConfigError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        err = MetaflowException(f"{exc}\n(fix the config file; {DEBUG_ENV}=1 shows the traceback)")
        err.headline = "Invalid config"
        raise err from None


@functools.lru_cache(maxsize=4)
def _config_from_json(text: str):
    from sso.config import SSOConfig

    return SSOConfig.from_dict(json.loads(text))

FLOW_OF_MODE = {"offline": ("SSOFlow", "flows/sso_flow.py"), "online": ("SSOOnlineFlow", "flows/sso_online_flow.py"),
                "iterative": ("SSOOnlineFlow", "flows/sso_online_flow.py")}


def check_mode(mode: str, flow_name: str, modes: tuple[str, ...], nodes: int = 1, multi_node: bool = False) -> None:
    """A ConfigError naming the flow to run when ``[run] mode`` is not one this flow runs, or when
    ``[resources.train] nodes`` > 1 asks for multi-node training of a flow that trains on one node
    (or on AWS Batch with local metadata: :func:`sso_nodes.check_batch_metadata`)."""
    from sso_nodes import check_batch_metadata

    if mode not in modes:
        name, path = FLOW_OF_MODE[mode]
        raise ConfigError(f"[run] mode = '{mode}' runs with {name}: python {path} --config cfg <config> run "
                          f"({flow_name} runs mode {' / '.join(repr(m) for m in modes)})")
    if nodes > 1 and not multi_node:
        raise ConfigError(f"[resources.train] nodes = {nodes} (multi-node training) runs with SSOMultiNodeFlow: "
                          f"python flows/sso_multinode_flow.py --config cfg <config> run --with batch (or "
                          f"--with kubernetes, argo-workflows create); {flow_name} trains on one node "
                          f"(gpu = N there: one DDP process per GPU)")
    check_batch_metadata(nodes)


class SSOBase(FlowSpec):
    """The shared steps of the SSO flows (not a flow to run: see SSOFlow and SSOOnlineFlow)."""

    MODES: tuple[str, ...] = ()      # the [run] modes a flow runs
    MULTI_NODE = False               # whether its training steps run on [resources.train] nodes

    cfg = Config("cfg", default=DEFAULT_CONFIG, parser=parse_config)
    n_queries = Parameter("n_queries", type=int, default=config_expr("cfg.data.n_queries"),
                          help="number of train queries (overrides [data] n_queries)")
    seed = Parameter("seed", type=int, default=config_expr("cfg.run.seed"),
                     help="run seed (overrides [run] seed)")

    # ------------------------------------------------------------------ helpers (not steps)
    @property
    def conf(self):
        """The run's validated ``SSOConfig`` (the ``run_config`` artifact), built once per task."""
        return _config_from_json(json.dumps(self.run_config, sort_keys=True))

    @property
    def model_path(self) -> str:
        """The local directory of the base model (``sso-tiny`` is built on first use)."""
        from sso.models.loading import resolve_model_path

        return resolve_model_path(self.conf.model.name)

    def tokenizer(self):
        """The base model's tokenizer (prompts are rendered once, with it, in generate_principles)."""
        from sso.models.loading import load_tokenizer

        m = self.conf.model
        return load_tokenizer(self.model_path, revision=m.revision, trust_remote_code=m.trust_remote_code)

    def arm_pairs(self, arm: str):
        """The preference pairs of an arm (``sso_arms.arm_pairs``)."""
        return sso_arms.arm_pairs(self, arm)

    def train(self, title: str, train_cfg, fn, *args):
        """Run a training step function (its last argument: the examples) with a live card; on a
        node of a multi-node step (``sso_nodes``) the nodes without rank 0 get (None, None, None)."""
        live = sso_cards.live_training_card(current.card["training"], title, len(args[-1]), train_cfg,
                                            self.conf.run.seed)
        ckpt_dir, origins = checkpoint_dirs()   # this task's, and on resume the origin run's
        launcher = sso_nodes.node_launcher()
        adapter, history, summary = fn(*args, self.conf, self.model_path, on_log=kill_hook(current.step_name, live),
                                       checkpoint_dir=ckpt_dir, resume_dirs=origins,
                                       **({"launcher": launcher} if launcher else {}))
        if summary is None:
            print(f"{title}: node {launcher.node_index} of {launcher.nodes} done (node 0 holds the result)")
            return adapter, history, summary
        live.finish(history, summary)
        print(f"{title}: {summary}")
        return stored_model(self, adapter), history, summary   # full models: files in the datastore

    # ------------------------------------------------------------------ steps
    @step
    def start(self):
        """Validate the config with the run's overrides, resolve the model, record versions."""
        from sso.config import SSOConfig, validate
        from sso.report.estimate import format_estimate
        from sso.report.runinfo import collect_versions

        self.run_config = validate(SSOConfig.from_dict(self.cfg.to_dict()).replace(
            **{"data.n_queries": self.n_queries, "run.seed": self.seed})).to_dict()
        self.model_path_at_start = self.model_path
        self.versions = collect_versions()
        check_mode(self.conf.run.mode, type(self).__name__, self.MODES, self.conf.resources.train.nodes,
                   self.MULTI_NODE)
        print(f"model: {self.conf.model.name} -> {self.model_path_at_start}\n{format_estimate(self.conf)}")
        self.next(self.load_queries)

    @compute(resources=cfg.resources.default)
    @step
    def load_queries(self):
        """Queries and eval queries, with counts of everything skipped; the shard plan."""
        from sso.generation.shards import plan_shards
        from steps.load_queries import load_queries

        self.queries, self.eval_queries, self.query_report = load_queries(self.conf.data, seed=self.conf.run.seed)
        print(f"queries: {self.query_report['summary']}")
        s = self.conf.sampling
        self.query_shards = plan_shards(self.queries, self.eval_queries, s.shards, shard_size=s.shard_size)
        self.next(self.generate_principles, foreach="query_shards")

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.principles)
    @step
    def generate_principles(self):
        """[foreach shard] A good/bad principle pair per train query of the shard (model-written
        ones through the principle cache in the datastore); the shard's records for sampling."""
        from sso.generation.shards import fill_shard, select_rows
        from steps.generate_principles import generate_principles

        queries = select_rows(self.queries, self.input["query_ids"])
        self.shard_principles = generate_principles(queries, self.conf, model_path=self.model_path,
                                                    store=shared_store(self, "principles"))
        self.shard = fill_shard(self.input, self.queries, self.eval_queries, self.shard_principles,
                                tokenizer=self.tokenizer(), placement=self.conf.principles.placement)
        self.next(self.sample_responses)

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.sample)
    @step
    def sample_responses(self):
        """y+ | x+, y- | x-, y_o | x from the initial policy for one shard; base answers."""
        from steps.sample_responses import sample_responses

        self.shard_samples = sample_responses(self.shard, self.conf, self.model_path)
        self.next(self.join_samples)

    @card(type="blank", id="samples")
    @step
    def join_samples(self, inputs):
        """Merge shards (principles, shard records, samples); drop and count degenerate records."""
        from sso.report.cards import build_samples_card
        from steps.join_samples import join_samples

        self.merge_artifacts(inputs, exclude=["shard", "shard_samples", "shard_principles"])
        out = join_samples([i.shard_samples for i in inputs], self.queries, capped=self.conf.sampling.capped,
                           shard_principles=[i.shard_principles for i in inputs], shards=[i.shard for i in inputs])
        for name in JOINED_SAMPLES:
            setattr(self, name, out[name])
        print(f"principles: {self.principles_report}\nsampling: {self.sampling_report}")
        sso_cards.show(current.card["samples"], build_samples_card(self.sampling_report, self.sso_triples,
                       self.pbaa_pairs, self.principles, self.query_report, self.principles_report))
        self.next(self.route_training)

    @step
    def fan_out_arms(self):
        """One policy branch per arm: [policy] arms, then sweep points or online iterations."""
        from sso.arms import plan_run

        self.arms = list(plan_run(self.conf).arms)
        self.next(self.train_policy, foreach="arms")

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.train)
    @datastore_checkpoints   # checkpoint dir in SSO_CHECKPOINT_DIR, kept across retried attempts
    @card(type="blank", id="training")
    @step
    def train_policy(self):
        """DPO/IPO/SimPO from the initial policy on this arm's pairs; the online SSO loss on its
        triples; an online iteration's policy as trained in the loop."""
        self.arm = self.input
        self.n_pairs = len(self.arm_pairs(self.arm))
        self.policy_adapter, self.policy_history, self.policy_summary = sso_arms.arm_training(self, self.arm)
        self.arm_info = sso_arms.arm_costs(self, self.arm)
        self.next(self.generate_answers)

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.sample)
    @step
    def generate_answers(self):
        """The arm's trained policy answers the eval queries."""
        from steps.generate_answers import generate_answers

        self.answers = generate_answers(self.base_answers, self.policy_adapter, self.conf, self.model_path)
        self.next(self.judge)

    @retry(times=2, minutes_between_retries=0)
    @secrets_from_config(judge=cfg.judge)
    @compute(resources=cfg.resources.judge)
    @card(type="blank", id="judge")
    @step
    def judge(self):
        """Pairwise judge: this arm vs the base answers (both orders); preference-data accuracy."""
        from sso.report.cards import build_judge_card
        from steps.judge import judge

        out = judge(self.arm, self.answers, self.base_answers, self.arm_pairs(self.arm), self.conf,
                    store=shared_store(self, "judge"))
        self.judgments, self.judge_metrics, self.judge_usage = out["judgments"], out["metrics"], out["usage"]
        print(f"judge[{self.arm}]: {self.judge_metrics}")
        sso_cards.show(current.card["judge"], build_judge_card(
            self.arm, self.judge_metrics, self.judge_usage, self.judgments, self.answers, self.base_answers))
        self.next(self.compare)

    @retry(times=2, minutes_between_retries=0)
    @secrets_from_config(judge=cfg.judge)
    @compute(resources=cfg.resources.judge)
    @card(type="blank", id="compare")
    @step
    def compare(self, inputs):
        """One results row per arm (with each arm judged head-to-head against sso); the per-arm
        artifacts gathered by arm."""
        from sso.report.cards import build_compare_card
        from steps.compare import compare

        self.merge_artifacts(inputs, exclude=PER_ARM)
        out = compare([{a: getattr(i, a) for a in PER_ARM} for i in inputs], self.arms, self.conf,
                      store=shared_store(self, "judge"))
        for name, value in out.items():
            setattr(self, name, value)
        sso_cards.show(current.card["compare"], build_compare_card(
            self.results, self.judgments, self.arm_answers, self.base_answers))
        self.next(self.end)

    @card(type="blank", id="summary")
    @step
    def end(self):
        """Print the summary; export preference data, adapters, results and cards; summary card."""
        from steps.end import end

        out_dir = os.path.join(self.conf.run.output_dir, f"{current.flow_name}-{current.run_id}")
        self.exported, summary = end(out_dir, self, run_info={
            "flow": current.flow_name, "run_id": current.run_id, "model": self.conf.model.name,
            "config": self.run_config})
        next_steps = sso_cards.finish_run(current.card["summary"], self, out_dir, flow_file=sys.argv[0], root=ROOT)
        print("\n" + summary + "\n")
        print(next_steps)



JOINED_SAMPLES = ["principles", "principles_report", "shards", "sso_triples", "pbaa_pairs", "base_answers",
                  "sampling_report"]
PER_ARM = ["arm", "n_pairs", "arm_info", "policy_adapter", "policy_history", "policy_summary", "answers",
           "judgments", "judge_metrics", "judge_usage"]

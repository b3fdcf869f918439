"""Self-Steering Optimization (SSO) as a Metaflow flow.

    python flows/sso_flow.py run                                  # configs/tiny.toml: CPU, offline, minutes
    python flows/sso_flow.py --config cfg configs/X.toml run      # another config
    python flows/sso_flow.py run --n_queries 32 --seed 1          # common overrides
    python flows/sso_flow.py resume                               # re-run only what failed

Steps:
    start                 validate the config, resolve the base model, record versions
    load_queries          queries / eval_queries (+ counts of what was skipped and why)
    generate_principles   one good/bad principle pair per query
    sample_responses      [foreach shard] y+ | x+, y- | x-, y_o | x from the initial policy; base answers
    join_samples          sso_triples, pbaa_pairs, base_answers, sampling_report
    train_generator       the SSO data generator (LoRA, SSO loss)
    generate_preferences  [foreach shard] y+ | x+, y- | x- from the generator
    join_preferences      sso_pairs (prompt, chosen, rejected)
    fan_out_arms          one branch per arm
    train_policy          [foreach arm: sso, pbaa] DPO/IPO from the initial policy
    generate_answers      the arm's policy answers the eval queries
    judge                 pairwise judge vs the base answers, both orders
    compare               results: one row per arm
    end                   printed summary and exported files

This file is the only place that imports metaflow; each step hands plain data to ``steps.*``.
"""

import os
import sys

# Metaflow refuses to run without a (non-root) user name, which is the norm in containers; fall
# back to a neutral one instead of failing the first run. An explicit METAFLOW_USER always wins.
if not any(os.environ.get(v, "root") != "root" for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")):
    os.environ["METAFLOW_USER"] = "sso"

from metaflow import Config, FlowSpec, Parameter, card, config_expr, current, package_sources, retry, step
from sso_decorators import (  # config-driven @resources/@timeout/@secrets; checkpoints in the datastore
    compute, compute_defaults, datastore_checkpoints, secrets_from_config)
import sso_cards  # noqa: E402  (flows/sso_cards.py: sso.report.cards specs -> card components, live training card)

# Make `sso` and `steps` importable when the flow runs from a source checkout (locally, and on
# remote tasks where @package_sources ships them next to this file's directory).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from sso.config import parse_config_text  # noqa: E402  (light: no torch/metaflow/vllm imports)

DEFAULT_CONFIG = os.path.join(_ROOT, "configs", "tiny.toml")
FAIL_ENV = "SSO_FAIL_AT_STEP"   # test hook: name of a step that raises (exercises resume)


@compute_defaults("cfg")   # [resources.default] for steps without @compute
@package_sources(
    [(os.path.join(_ROOT, "sso"), "sso"), (os.path.join(_ROOT, "steps"), "steps")],
    suffixes=[".py", ".jsonl", ".json", ".toml", ".jinja"],
)
class SSOFlow(FlowSpec):
    """Self-Steering Optimization: principle-steered sampling, an SSO-trained data generator, and
    DPO policies compared against the principle-based (PBAA) baseline by a pairwise judge."""

    cfg = Config("cfg", default=DEFAULT_CONFIG, parser=parse_config_text)
    n_queries = Parameter("n_queries", type=int, default=config_expr("cfg.data.n_queries"),
                          help="number of train queries (overrides [data] n_queries)")
    seed = Parameter("seed", type=int, default=config_expr("cfg.run.seed"),
                     help="run seed (overrides [run] seed)")

    # ------------------------------------------------------------------ helpers (not steps)
    def _cfg(self):
        from sso.config import SSOConfig

        return SSOConfig.from_dict(self.run_config)

    def _model_path(self):
        from sso.models.loading import resolve_model_path

        return resolve_model_path(self._cfg().model.name)

    def _maybe_fail(self):
        if os.environ.get(FAIL_ENV) == current.step_name:
            raise RuntimeError(f"{FAIL_ENV}={current.step_name}: injected failure")

    # ------------------------------------------------------------------ steps
    @step
    def start(self):
        """Validate the config with the run's overrides, resolve the model, record versions."""
        from sso.config import SSOConfig, validate
        from sso.report.runinfo import collect_versions

        self._maybe_fail()
        cfg = validate(SSOConfig.from_dict(self.cfg.to_dict()).replace(
            **{"data.n_queries": self.n_queries, "run.seed": self.seed}))
        self.run_config = cfg.to_dict()
        self.model_path_at_start = self._model_path()
        self.versions = collect_versions()
        print(f"model: {cfg.model.name} -> {self.model_path_at_start}")
        self.next(self.load_queries)

    @compute(resources=cfg.resources.default)
    @step
    def load_queries(self):
        """Queries and eval queries, with counts of everything skipped."""
        from steps.load_queries import load_queries

        self._maybe_fail()
        cfg = self._cfg()
        self.queries, self.eval_queries, self.query_report = load_queries(cfg.data, seed=cfg.run.seed)
        print(f"queries: {self.query_report}")
        self.next(self.generate_principles)

    @step
    def generate_principles(self):
        """One good/bad principle pair per train query."""
        from steps.generate_principles import generate_principles, principles_report
        from steps.sample_responses import plan_shards

        self._maybe_fail()
        cfg = self._cfg()
        self.principles = generate_principles(self.queries, cfg.principles, seed=cfg.run.seed,
                                              model_path=self._model_path(), model_cfg=cfg.model)
        self.principles_report = principles_report(self.principles)
        print(f"principles: {self.principles_report}")
        self.shards = plan_shards(self.queries, self.eval_queries, cfg.sampling.shards,
                                  shard_size=cfg.sampling.shard_size)
        self.next(self.sample_responses, foreach="shards")

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.sample)
    @step
    def sample_responses(self):
        """y+ | x+, y- | x-, y_o | x from the initial policy for one shard; base answers."""
        from steps.sample_responses import sample_responses

        self._maybe_fail()
        self.shard = self.input
        self.shard_samples = sample_responses(self.shard, self.queries, self.principles,
                                              self.eval_queries, self._cfg(), self._model_path())
        self.next(self.join_samples)

    @card(type="blank", id="samples")
    @step
    def join_samples(self, inputs):
        """Merge shards; drop and count degenerate records."""
        from sso.report.cards import build_samples_card
        from steps.sample_responses import join_samples

        self.merge_artifacts(inputs, exclude=["shard", "shard_samples"])
        self._maybe_fail()
        out = join_samples([i.shard_samples for i in inputs], self.queries, self.principles)
        self.sso_triples, self.pbaa_pairs = out["sso_triples"], out["pbaa_pairs"]
        self.base_answers, self.sampling_report = out["base_answers"], out["report"]
        print(f"sampling: {self.sampling_report}")
        sso_cards.show(current.card["samples"], build_samples_card(
            self.sampling_report, self.sso_triples, self.pbaa_pairs, self.principles,
            self.query_report, getattr(self, "principles_report", None)))
        self.next(self.train_generator)

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.train)
    @datastore_checkpoints   # checkpoint dir in SSO_CHECKPOINT_DIR, kept across retried attempts
    @card(type="blank", id="training")
    @step
    def train_generator(self):
        """Train the data generator with the SSO loss (LoRA)."""
        from steps.train_generator import train_generator

        self._maybe_fail()
        cfg = self._cfg()
        live = sso_cards.live_training_card(current.card["training"], "Generator (SSO loss)",
                                            len(self.sso_triples), cfg.generator, cfg.run.seed)
        self.generator_adapter, self.generator_history, self.generator_summary = train_generator(
            self.sso_triples, cfg, self._model_path(), on_log=live,
            checkpoint_dir=os.environ.get("SSO_CHECKPOINT_DIR"))
        live.finish(self.generator_history, self.generator_summary)
        print(f"generator: {self.generator_summary}")
        self.pref_shards = [{**s, "eval_ids": []} for s in self.shards if s["query_ids"]]
        self.next(self.generate_preferences, foreach="pref_shards")

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.sample)
    @step
    def generate_preferences(self):
        """y+ | x+ and y- | x- from the generator for one shard."""
        from steps.generate_preferences import generate_preferences

        self._maybe_fail()
        self.shard_preferences = generate_preferences(
            self.input, self.queries, self.principles, self.generator_adapter, self._cfg(),
            self._model_path())
        self.next(self.join_preferences)

    @step
    def join_preferences(self, inputs):
        """sso_pairs: (plain prompt, chosen = y+, rejected = y-) from the generator."""
        from steps.generate_preferences import join_preferences

        self.merge_artifacts(inputs, exclude=["shard_preferences"])
        self._maybe_fail()
        self.sso_pairs, self.preference_report = join_preferences(
            [i.shard_preferences for i in inputs], self.queries, self.principles)
        print(f"preferences: {self.preference_report}")
        self.next(self.fan_out_arms)

    @step
    def fan_out_arms(self):
        """One policy-training branch per arm (Metaflow: a join cannot also be a split)."""
        self.arms = list(self._cfg().policy.arms)
        self.next(self.train_policy, foreach="arms")

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.train)
    @datastore_checkpoints   # checkpoint dir in SSO_CHECKPOINT_DIR, kept across retried attempts
    @card(type="blank", id="training")
    @step
    def train_policy(self):
        """DPO/IPO from the initial policy on this arm's pairs."""
        from steps.train_policy import train_policy

        self._maybe_fail()
        self.arm = self.input
        pairs = {"sso": self.sso_pairs, "pbaa": self.pbaa_pairs}[self.arm]
        self.n_pairs = len(pairs)
        cfg = self._cfg()
        live = sso_cards.live_training_card(current.card["training"], f"Policy {self.arm} ({cfg.policy.loss})",
                                            len(pairs), cfg.policy, cfg.run.seed)
        self.policy_adapter, self.policy_history, self.policy_summary = train_policy(
            self.arm, pairs, cfg, self._model_path(), on_log=live,
            checkpoint_dir=os.environ.get("SSO_CHECKPOINT_DIR"))
        live.finish(self.policy_history, self.policy_summary)
        print(f"policy[{self.arm}]: {self.policy_summary}")
        self.next(self.generate_answers)

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.sample)
    @step
    def generate_answers(self):
        """The arm's trained policy answers the eval queries."""
        from steps.generate_answers import generate_answers

        self._maybe_fail()
        self.answers = generate_answers(self.eval_queries, self.policy_adapter, self._cfg(),
                                        self._model_path())
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

        self._maybe_fail()
        pairs = {"sso": self.sso_pairs, "pbaa": self.pbaa_pairs}[self.arm]
        out = judge(self.arm, self.answers, self.base_answers, pairs, self._cfg())
        self.judgments, self.judge_metrics, self.judge_usage = (
            out["judgments"], out["metrics"], out["usage"])
        print(f"judge[{self.arm}]: {self.judge_metrics}")
        sso_cards.show(current.card["judge"], build_judge_card(
            self.arm, self.judge_metrics, self.judge_usage, self.judgments, self.answers, self.base_answers))
        self.next(self.compare)

    @card(type="blank", id="compare")
    @step
    def compare(self, inputs):
        """One results row per arm."""
        import pandas as pd

        from sso.report.cards import build_compare_card
        from steps.compare import compare

        per_arm = ["arm", "n_pairs", "policy_adapter", "policy_history", "policy_summary", "answers",
                   "judgments", "judge_metrics", "judge_usage"]
        self.merge_artifacts(inputs, exclude=per_arm)
        self._maybe_fail()
        self.results = compare(
            [{"arm": i.arm, "n_pairs": i.n_pairs, "train_summary": i.policy_summary,
              "metrics": i.judge_metrics, "usage": i.judge_usage} for i in inputs],
            arm_order=self.arms)
        self.policy_adapters = {i.arm: i.policy_adapter for i in inputs}
        self.policy_histories = {i.arm: i.policy_history for i in inputs}
        self.policy_summaries = {i.arm: i.policy_summary for i in inputs}
        self.arm_answers = pd.concat([i.answers.assign(arm=i.arm) for i in inputs], ignore_index=True)
        self.judgments = pd.concat([i.judgments.assign(arm=i.arm) for i in inputs], ignore_index=True)
        sso_cards.show(current.card["compare"], build_compare_card(
            self.results, self.judgments, self.arm_answers, self.base_answers))
        self.next(self.end)

    @card(type="blank", id="summary")
    @step
    def end(self):
        """Print the summary; export preference data, adapters, results and cards; summary card."""
        from sso.report.cards import build_summary_card, render_next_steps
        from steps.compare import format_summary
        from steps.export import export_run

        self._maybe_fail()
        cfg = self._cfg()
        out_dir = os.path.join(cfg.run.output_dir, f"{current.flow_name}-{current.run_id}")
        self.exported = export_run(out_dir, results=self.results, sso_pairs=self.sso_pairs,
                                   pbaa_pairs=self.pbaa_pairs, generator_adapter=self.generator_adapter,
                                   policy_adapters=self.policy_adapters,
                                   generator_summary=self.generator_summary,
                                   policy_summaries=self.policy_summaries,
                                   run_info={"flow": current.flow_name, "run_id": current.run_id,
                                             "model": cfg.model.name, "config": self.run_config})
        cards, card_files = sso_cards.save_step_cards_safely(f"{current.flow_name}/{current.run_id}", out_dir)
        sso_cards.show(current.card["summary"], build_summary_card(
            flow_name=current.flow_name, run_id=current.run_id, config=self.run_config,
            results=self.results, sampling_report=self.sampling_report,
            generator_summary=self.generator_summary, policy_summaries=self.policy_summaries,
            step_cards=cards, exported=self.exported, card_files=card_files))
        print("\n" + format_summary(self.results) + "\n")
        print(render_next_steps(flow_file=os.path.relpath(os.path.abspath(__file__)), run_id=current.run_id,
                                out_dir=os.path.abspath(out_dir), exported=self.exported,
                                configs_dir=os.path.relpath(os.path.join(_ROOT, "configs")), n_card_files=len(card_files)))


if __name__ == "__main__":
    SSOFlow()

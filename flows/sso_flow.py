"""Self-Steering Optimization (SSO) as a Metaflow flow.

    python flows/sso_flow.py run                                  # configs/tiny.toml: CPU, offline, minutes
    python flows/sso_flow.py --config cfg configs/X.toml run      # another config
    python flows/sso_flow.py run --n_queries 32 --seed 1          # common overrides
    python flows/sso_flow.py resume                               # re-run only what failed

Steps:
    start                 validate the config, resolve the base model, record versions
    load_queries          queries / eval_queries (+ counts of what was skipped and why); shard plan
    generate_principles   [foreach shard] one good/bad principle pair per query (cached in the datastore)
    sample_responses      [same shard] y+ | x+, y- | x-, y_o | x from the initial policy; base answers
    join_samples          principles, sso_triples, pbaa_pairs, base_answers, sampling_report
    route_training        one branch per generator variant (sso, lambda = 0, gamma = 0, sweep points)
    train_generator       [foreach variant] an SSO data generator (LoRA, SSO loss)
    generate_preferences  [foreach shard] y+ | x+, y- | x- from the generator
    join_preferences      sso_pairs of one generator (prompt, chosen, rejected)
    join_generators       generator_pairs, generator_adapters, ... by variant
    fan_out_arms          one branch per arm
    train_policy          [foreach arm] DPO/IPO/SimPO (or the online loss) from the initial policy
    generate_answers      the arm's policy answers the eval queries
    judge                 pairwise judge vs the base answers, both orders
    compare               results: one row per arm
    end                   printed summary and exported files

This file holds the steps of the published SSO between ``join_samples`` and ``fan_out_arms``; the
others are shared with ``sso_online_flow.py`` (``[run] mode = "online"`` / ``"iterative"``) in
``sso_base.py``, which also says what the other modules of the Metaflow layer do.
"""

import os

from sso_base import ROOT, SSOBase  # first: sso_base.py sets a Metaflow user and puts the repo on sys.path
from metaflow import card, package_sources, retry, step
from sso_checkpoints import datastore_checkpoints  # training checkpoints across retries and resume
from sso_decorators import compute, compute_defaults  # config-driven @resources; failure hooks for tests

cfg = SSOBase.cfg   # the run's Config, for the step decorators below


@compute_defaults("cfg")   # [resources.default] for steps without @compute; @failure_point everywhere
@package_sources(
    [(os.path.join(ROOT, "sso"), "sso"), (os.path.join(ROOT, "steps"), "steps")],
    suffixes=[".py", ".jsonl", ".json", ".toml", ".jinja"],
)
class SSOFlow(SSOBase):
    """Self-Steering Optimization: principle-steered sampling, SSO-trained data generators, and
    DPO policies compared against the principle-based (PBAA) baseline by a pairwise judge."""

    MODES = ("offline",)

    @step
    def route_training(self):
        """One generator per variant the arms need ([generator] as is, lambda = 0, gamma = 0, sweep points)."""
        from steps.route_training import initial_artifacts

        for name, value in initial_artifacts(self.conf, self.sso_triples).items():
            setattr(self, name, value)
        self.next(self.train_generator, foreach="generators")

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.train)
    @datastore_checkpoints   # checkpoint dir in SSO_CHECKPOINT_DIR, kept across retried attempts
    @card(type="blank", id="training")
    @step
    def train_generator(self):
        """[foreach generator variant] Train a data generator with the SSO loss (LoRA)."""
        from sso.arms import generator_config, plan_run
        from sso.generation.shards import preference_shards
        from steps.train_generator import train_generator

        self.generator = self.input
        gen_cfg = generator_config(self.conf.generator, plan_run(self.conf).generators[self.generator])
        self.generator_adapter, self.generator_history, self.generator_summary = self.train(
            f"Generator {self.generator} (SSO loss)", gen_cfg, train_generator, self.generator, self.sso_triples)
        self.pref_shards = preference_shards(self.shards)
        self.next(self.generate_preferences, foreach="pref_shards")

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.sample)
    @step
    def generate_preferences(self):
        """y+ | x+ and y- | x- from the generator for one shard."""
        from steps.generate_preferences import generate_preferences

        self.shard_preferences = generate_preferences(self.input, self.generator_adapter, self.conf,
                                                      self.model_path)
        self.next(self.join_preferences)

    @step
    def join_preferences(self, inputs):
        """sso_pairs of one generator: (plain prompt, chosen = y+, rejected = y-)."""
        from steps.join_preferences import join_preferences

        self.merge_artifacts(inputs, exclude=["shard_preferences"])
        self.sso_pairs, self.preference_report = join_preferences(
            [i.shard_preferences for i in inputs], self.queries, capped=self.conf.sampling.capped)
        print(f"preferences[{self.generator}]: {self.preference_report}")
        self.next(self.join_generators)

    @step
    def join_generators(self, inputs):
        """Every generator's adapter, history, summary and pairs, by variant (``sso_pairs`` and
        ``generator_*``: the [generator] variant's, when the run trains it)."""
        from steps.join_generators import join_generators

        self.merge_artifacts(inputs, exclude=PER_GENERATOR)
        for name, value in join_generators([{a: getattr(i, a) for a in PER_GENERATOR} for i in inputs]).items():
            setattr(self, name, value)
        self.next(self.fan_out_arms)


PER_GENERATOR = ["generator", "generator_adapter", "generator_history", "generator_summary", "sso_pairs",
                 "preference_report"]


if __name__ == "__main__":
    SSOFlow()

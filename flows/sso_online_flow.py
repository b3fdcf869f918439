"""Iterative Self-Steering Optimization as a Metaflow flow: the policy trained T times in a row.

    python flows/sso_online_flow.py --config cfg configs/X.toml run   # [run] mode = "online" or "iterative"
    python flows/sso_online_flow.py resume                             # resumes at the failed iteration

``[run] mode = "online"`` is the paper's earlier, online SSO (the policy trained with
``W * (L_main + theta * G)`` on triples it sampled itself); ``"iterative"`` repeats the published
two-stage SSO (a generator and a DPO policy from the last policy). Steps (``flows/sso_base.py``
holds the shared ones): start, load_queries, generate_principles [foreach shard],
sample_responses, join_samples, then

    route_training        the loop's starting state: iteration 0, the initial policy's triples
    online_iteration      [loops on itself T times, one task per iteration] train the policy from
                          the previous iteration's (its reference), sample the next triples

then fan_out_arms, train_policy [foreach arm: the online_it<t> arms take the loop's policies],
generate_answers, judge, compare and end, as in SSOFlow. A failure in iteration t is resumed at
iteration t: ``resume`` clones iterations 1..t-1. AWS Step Functions refuses this flow (it has a
conditional step); Argo Workflows, Kubernetes and AWS Batch run it.
"""

import os

from sso_base import ROOT, SSOBase  # first: sso_base.py sets a Metaflow user and puts the repo on sys.path
from metaflow import card, package_sources, retry, step
import sso_arms  # noqa: E402  (flows/sso_arms.py: the loop's iterations)
from sso_checkpoints import datastore_checkpoints  # training checkpoints across retries and resume
from sso_decorators import compute, compute_defaults  # config-driven @resources; failure hooks for tests

cfg = SSOBase.cfg   # the run's Config, for the step decorators below


@compute_defaults("cfg")   # [resources.default] for steps without @compute; @failure_point everywhere
@package_sources(
    [(os.path.join(ROOT, "sso"), "sso"), (os.path.join(ROOT, "steps"), "steps")],
    suffixes=[".py", ".jsonl", ".json", ".toml", ".jinja"],
)
class SSOOnlineFlow(SSOBase):
    """Online / iterative SSO: the policy trained iteration after iteration, each iteration's policy
    an arm judged against the base policy beside the configured arms."""

    MODES = ("online", "iterative")

    @step
    def route_training(self):
        """The loop's starting state: iteration 0, the initial policy's triples."""
        from steps.route_training import initial_artifacts

        for name, value in initial_artifacts(self.conf, self.sso_triples).items():
            setattr(self, name, value)
        self.next(self.online_iteration)

    @retry(times=1, minutes_between_retries=0)
    @compute(resources=cfg.resources.train)
    @datastore_checkpoints   # checkpoint dir in SSO_CHECKPOINT_DIR, kept across retried attempts
    @card(type="blank", id="training")
    @step
    def online_iteration(self):
        """[run] mode = online / iterative, iteration t (one task each): train the policy from
        iteration t-1's (also the reference) on triples it sampled; sample the next ones."""
        from steps.online_iteration import STATE, record_iteration

        t, init = self.iteration + 1, (self.online_policies[-1] if self.online_policies else None)
        out = sso_arms.run_iteration(self, t, init)
        state = {name: getattr(self, name) for name in STATE}
        for name, value in record_iteration(state, t, out, self.conf, sso_arms.resampler(self)).items():
            setattr(self, name, value)
        self.next({"again": self.online_iteration, "done": self.fan_out_arms}, condition="loop")



if __name__ == "__main__":
    SSOOnlineFlow()

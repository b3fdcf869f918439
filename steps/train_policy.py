"""Step ``train_policy`` (one foreach task per arm): DPO/IPO/SimPO from the initial policy, or
(the ``online_sso`` arm) the online SSO loss on the initial policy's triples.

The arm's loss is ``[policy] loss`` unless the arm overrides it (:data:`sso.arms.ARMS`); an online
arm's base loss is ``[policy.online] loss``. Online-iteration arms are trained in the loop, not here.

Inputs: the arm name, its preference pairs (query_id, prompt, chosen, rejected, and when carried
``chosen_finished`` / ``rejected_finished`` and the rendered plain prompt ``x_plain``), the config
and the resolved model path. The DPO prompt is the *plain* query x (no principle), the string the
eval answers are sampled from. Outputs: (adapter files as bytes, history DataFrame, summary dict).
Side effects: loads the model; checkpoints in ``checkpoint_dir`` when given, resuming from the
newest one of the same fingerprint there or in ``resume_dirs`` (the origin run's, on ``resume``).
``on_log`` gets each logged history row (live cards). ``launcher``: one node of a multi-node job
(:func:`sso.training.launch.train_job`); on the nodes without rank 0 the outputs are all None.
"""

from __future__ import annotations

import pandas as pd

from sso.arms import arm_policy_config
from sso.config import SSOConfig
from sso.generation.shards import policy_table


def train_policy(arm: str, pairs: pd.DataFrame, cfg: SSOConfig, model_path: str, *,
                 checkpoint_dir: str | None = None, progress: bool = True, on_log=None,
                 resume_dirs=(), launcher=None):
    from sso.arms import plan_run
    from sso.training.launch import job_outputs, train_job, train_processes

    spec = plan_run(cfg).arms[arm]
    run = dict(seed=cfg.run.seed, nproc=train_processes(cfg.resources.train), checkpoint_dir=checkpoint_dir,
               progress=progress, on_log=on_log, resume_dirs=resume_dirs, launcher=launcher)
    if spec.kind == "online":
        from sso.generation.shards import online_table

        result = train_job("online_sso", model_path, online_table(pairs, cfg, model_path),
                           arm_policy_config(cfg.policy, spec), cfg.model, **run)
    else:
        table = policy_table(pairs, cfg, model_path, arm)
        result = train_job("dpo", model_path, table, arm_policy_config(cfg.policy, spec), cfg.model, **run)
    return job_outputs(result)

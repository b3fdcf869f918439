"""Step ``online_iteration`` (``[run] mode = "online"`` or ``"iterative"``; one task per iteration,
the step loops on itself): the earlier, online SSO, or the published SSO repeated.

Iteration t trains the policy with the online SSO loss ``W * (L_main + theta * G)``
(``[policy]`` training settings, ``[policy.online]`` loss options) on the triples (x, x+, x-; y+ | x+,
y- | x-, y_o | x) that the policy of iteration t - 1 sampled (t = 1: the initial policy's
``sso_triples``), starting from that policy's adapter, which is also the iteration's frozen reference
(t = 1: a fresh adapter, the base model as reference). Unless t is the last iteration, the new
policy then samples the next iteration's triples over the same queries and principles, with its
own seed stream (``[run] seed + t``).

With ``mode = "iterative"`` iteration t is the published two-stage SSO started from the policy of
iteration t - 1: a generator trained from that policy's adapter (its reference) with the SSO loss
on the triples (:func:`iteration_generator`), the generator's pairs sampled over every train query,
and the policy trained from the same adapter (its reference) with ``[policy] loss`` on them
(:func:`iteration_policy`); the iteration's training data are then those pairs.

Outputs (the loop state, each a list with one entry per iteration so far): ``online_policies``
(adapter bytes), ``online_histories``, ``online_summaries`` (with ``iteration`` and
``init_adapter_sha256``: the adapter it started from, empty for t = 1), ``online_training_data``
(the triples it trained on), ``online_sampling_reports``, for ``"iterative"`` also
``online_generators`` and ``online_generator_histories`` (each iteration's generator and its loss
curve); ``iteration_triples`` for t + 1, and
``loop`` (``again`` / ``done``). Side effects: loads the model for training and for sampling.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from sso.arms import ARMS, arm_policy_config
from sso.config import SSOConfig
from sso.generation.shards import generator_table, online_table, policy_table
STATE = ["online_policies", "online_histories", "online_summaries", "online_training_data",
         "online_sampling_reports", "online_generators", "online_generator_histories", "iteration_triples"]


def adapter_sha256(adapter: dict[str, bytes] | None) -> str:
    if not adapter:
        return ""
    h = hashlib.sha256()
    for name in sorted(adapter):
        h.update(name.encode() + b"\0" + adapter[name])
    return h.hexdigest()


def online_iteration(t: int, init_adapter, triples: pd.DataFrame, cfg: SSOConfig, model_path: str, *,
                     checkpoint_dir: str | None = None, progress: bool = True, on_log=None, resume_dirs=()):
    """Train iteration ``t`` with the online SSO loss; returns (adapter, history, summary)."""
    return _iteration_job("online_sso", online_table(triples, cfg, model_path),
                          arm_policy_config(cfg.policy, ARMS["online_sso"]), t, init_adapter, cfg, model_path,
                          checkpoint_dir=checkpoint_dir, progress=progress, on_log=on_log, resume_dirs=resume_dirs)


def iteration_generator(t: int, init_adapter, triples: pd.DataFrame, cfg: SSOConfig, model_path: str, **run):
    """Iterative SSO, iteration ``t``: the generator from ``init_adapter`` (the last policy)."""
    return _iteration_job("sso", generator_table(triples, cfg, model_path), cfg.generator, t, init_adapter,
                          cfg, model_path, **run)


def iteration_policy(t: int, init_adapter, pairs: pd.DataFrame, cfg: SSOConfig, model_path: str, **run):
    """Iterative SSO, iteration ``t``: the policy from ``init_adapter`` on the generator's pairs."""
    return _iteration_job("dpo", policy_table(pairs, cfg, model_path), cfg.policy, t, init_adapter,
                          cfg, model_path, **run)


def _iteration_job(objective: str, table: pd.DataFrame, train_cfg, t: int, init_adapter, cfg: SSOConfig,
                   model_path: str, **run):
    from sso.training.launch import train_job, train_processes

    result = train_job(objective, model_path, table, train_cfg, cfg.model, seed=cfg.run.seed + t - 1,
                       nproc=train_processes(cfg.resources.train), init_adapter=init_adapter, **run)
    summary = {**result.summary, "iteration": t, "init_adapter_sha256": adapter_sha256(init_adapter)}
    return result.adapter, result.history, summary


def record_iteration(state: dict, t: int, trained: dict, cfg: SSOConfig, resample) -> dict:
    """The loop state after iteration ``t`` (``state``: the :data:`STATE` artifacts before it;
    ``trained``: adapter, history, summary, training_data and, iterative, generator_adapter;
    ``resample(adapter, t)``: the triples and sampling report of iteration t + 1, sampled by the
    policy ``adapter`` over the run's queries and principles with seed ``[run] seed + t``)."""
    adapter, history, summary = trained["adapter"], trained["history"], trained["summary"]
    new = {
        "iteration": t, "loop": "again" if t < cfg.run.iterations else "done",
        "online_policies": [*state["online_policies"], adapter],
        "online_histories": [*state["online_histories"], history],
        "online_summaries": [*state["online_summaries"], summary],
        "online_training_data": [*state["online_training_data"], trained["training_data"]],
        "online_sampling_reports": list(state["online_sampling_reports"]),
        "online_generators": [*state["online_generators"], *[trained[k] for k in ("generator_adapter",) if k in trained]],
        "online_generator_histories": [*state["online_generator_histories"],
                                       *[trained[k] for k in ("generator_history",) if k in trained]],
    }
    if t < cfg.run.iterations:
        new["iteration_triples"], report = resample(adapter, t)
        new["online_sampling_reports"].append(report)
        print(f"online iteration {t + 1} samples: {report}")
    return new

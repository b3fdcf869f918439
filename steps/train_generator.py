"""Step ``train_generator`` (one foreach task per generator variant): train an SSO data generator
(LoRA on the initial policy) with ``[generator]`` and the variant's overrides
(:func:`sso.arms.plan_run`: ``sso`` as written, ``no_minus`` lambda = 0, ``no_sft`` gamma = 0, sweep
points).

Inputs: the variant name, ``sso_triples`` (query_id, prompt, good_principle, bad_principle, y_plus, y_minus, y_o,
their ``*_finished`` flags and the rendered x_plus / x_minus carried from sampling), the config
and the resolved model path. The prompts are the very strings the responses were sampled from
(rendered once, in ``generate_principles``); triples without them are rendered here with the
configured placement. A capped response (``*_finished`` False) is scored without end-of-turn.
Outputs: (adapter files as bytes, history DataFrame, summary dict). Side effects: loads the model;
checkpoints in ``checkpoint_dir`` when given, resuming from the newest one of the same
fingerprint there or in ``resume_dirs`` (the origin run's, on ``resume``). ``on_log`` gets each
logged history row (live cards). ``launcher``: one node of a multi-node job
(:func:`sso.training.launch.train_job`); on the nodes without rank 0 the outputs are all None.
"""

from __future__ import annotations

import pandas as pd

from sso.config import SSOConfig
from sso.generation.shards import generator_table


def train_generator(variant: str, sso_triples: pd.DataFrame, cfg: SSOConfig, model_path: str, *,
                    checkpoint_dir: str | None = None, progress: bool = True, on_log=None,
                    resume_dirs=(), launcher=None):
    from sso.arms import generator_config, plan_run
    from sso.training.launch import job_outputs, train_job, train_processes

    triples = generator_table(sso_triples, cfg, model_path)
    gen_cfg = generator_config(cfg.generator, plan_run(cfg).generators[variant])
    result = train_job("sso", model_path, triples, gen_cfg, cfg.model, seed=cfg.run.seed,
                       nproc=train_processes(cfg.resources.train), checkpoint_dir=checkpoint_dir,
                       progress=progress, on_log=on_log, resume_dirs=resume_dirs, launcher=launcher)
    return job_outputs(result)

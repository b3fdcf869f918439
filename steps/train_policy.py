"""Step ``train_policy`` (one foreach task per arm): DPO/IPO from the initial policy.

Inputs: the arm name, its preference pairs (query_id, prompt, chosen, rejected), the config and
the resolved model path. The DPO prompt is the *plain* query rendered with the chat template (no
principle). Outputs: (adapter files as bytes, history DataFrame, summary dict). Side effect:
checkpoints in ``checkpoint_dir`` when given. ``on_log`` gets each logged history row (live cards).
"""

from __future__ import annotations

import pandas as pd

from sso.generation.chat import render_prompt
from sso.config import SSOConfig
from sso.models.loading import load_tokenizer


def train_policy(arm: str, pairs: pd.DataFrame, cfg: SSOConfig, model_path: str, *,
                 checkpoint_dir: str | None = None, progress: bool = True, on_log=None):
    from sso.training.trainer import train_dpo

    if pairs.empty:
        raise ValueError(f"arm {arm!r} has no preference pairs to train on")
    tok = load_tokenizer(model_path, revision=cfg.model.revision,
                         trust_remote_code=cfg.model.trust_remote_code)
    table = pd.DataFrame({
        "query_id": pairs["query_id"],
        "prompt_text": [render_prompt(tok, p) for p in pairs["prompt"]],
        "chosen": pairs["chosen"], "rejected": pairs["rejected"],
    })
    result = train_dpo(model_path, table, cfg.policy, cfg.model, seed=cfg.run.seed,
                       checkpoint_dir=checkpoint_dir, progress=progress, on_log=on_log)
    return result.adapter, result.history, result.summary

"""Step ``train_generator``: train the SSO data generator (LoRA on the initial policy).

Inputs: ``sso_triples`` (query_id, prompt, good_principle, bad_principle, y_plus, y_minus, y_o),
the config and the resolved model path. Prompts x+ / x- are rendered with the model's own chat
template (principle as system message), exactly as they were rendered for sampling.
Outputs: (adapter files as bytes, history DataFrame, summary dict). Side effect: checkpoints in
``checkpoint_dir`` when given. ``on_log`` gets each logged history row (live cards).
"""

from __future__ import annotations

import pandas as pd

from sso.generation.chat import render_prompt
from sso.config import SSOConfig
from sso.models.loading import load_tokenizer


def train_generator(sso_triples: pd.DataFrame, cfg: SSOConfig, model_path: str, *,
                    checkpoint_dir: str | None = None, progress: bool = True, on_log=None):
    from sso.training.trainer import train_sso

    if sso_triples.empty:
        raise ValueError("no SSO triples to train the generator on (all sampled records were "
                         "degenerate or no generator queries were configured); see sampling_report")
    tok = load_tokenizer(model_path, revision=cfg.model.revision,
                         trust_remote_code=cfg.model.trust_remote_code)
    triples = pd.DataFrame({
        "query_id": sso_triples["query_id"],
        "x_plus": [render_prompt(tok, r.prompt, r.good_principle) for r in sso_triples.itertuples()],
        "x_minus": [render_prompt(tok, r.prompt, r.bad_principle) for r in sso_triples.itertuples()],
        "y_plus": sso_triples["y_plus"], "y_minus": sso_triples["y_minus"], "y_o": sso_triples["y_o"],
    })
    result = train_sso(model_path, triples, cfg.generator, cfg.model, seed=cfg.run.seed,
                       checkpoint_dir=checkpoint_dir, progress=progress, on_log=on_log)
    return result.adapter, result.history, result.summary

"""Step ``generate_principles``: one good/bad principle pair per train query.

Inputs: ``queries`` (query_id, prompt), ``PrinciplesConfig`` and the run seed; for model-written
principles (``source = "model"``) also the policy model path and ``ModelConfig`` (the principle
model defaults to the policy itself), or an injected principle model.
Output: ``principles`` DataFrame, one row per query in query order, with at least query_id,
features, good_principle, bad_principle (complete system messages) and source (``catalogue``,
``model`` or ``fallback``); model-written rows add the parsed guidelines, the fallback reason and
the raw replies (see :mod:`sso.data.principle_writer`). ``principles_report`` counts sources and
fallbacks. Side effects: none, apart from requests to a configured endpoint.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from sso.config import PrinciplesConfig
from sso.data.principle_writer import (PrincipleModel, build_principle_model, generic_fallback,
                                  principles_report, write_principles)
from sso.data.principles import build_catalogue_principles
from sso.generation.sampling import GenerationParams

__all__ = ["generate_principles", "principles_report", "writer_params"]


def writer_params(cfg: PrinciplesConfig, *, seed: int) -> GenerationParams:
    return GenerationParams(temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, seed=seed)


def generate_principles(queries: pd.DataFrame, cfg: PrinciplesConfig, *, seed: int,
                        model_path: str | None = None, model_cfg: Any = None,
                        principle_model: PrincipleModel | None = None) -> pd.DataFrame:
    catalogue = build_catalogue_principles(queries, seed=seed, k=cfg.n_features,
                                           concision_prob=cfg.concision_prob)
    if cfg.source == "catalogue":
        return catalogue
    if cfg.source != "model":
        raise ValueError(f"[principles] source {cfg.source!r} is not supported")
    fallback = catalogue if cfg.fallback == "catalogue" else generic_fallback(list(queries["query_id"]))
    own = principle_model is None
    principle_model = principle_model or build_principle_model(
        cfg, policy_model_path=model_path, model_cfg=model_cfg)
    try:
        return write_principles(queries, principle_model, writer_params(cfg, seed=seed), fallback)
    finally:
        if own:
            principle_model.close()

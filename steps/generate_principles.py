"""Step ``generate_principles``: one good/bad principle pair per train query.

Inputs: ``queries`` (query_id, prompt) and the config (``[principles]``, the run seed, and for
model-written principles ``[model]``/``[sampling]`` and the policy model path: the principle
model defaults to the policy itself), or an injected principle model.
Output: ``principles`` DataFrame, one row per query in query order, with at least query_id,
features, good_principle, bad_principle (complete system messages) and source (``catalogue``,
``model``, ``fallback`` or ``verifiable``; verifiable rows add the ``rule_id`` a rule judge checks); model-written rows add the parsed guidelines, the fallback reason and
the raw replies (see :mod:`sso.data.principle_writer`). Side effects: a model-written source loads
the principle model or sends requests to the configured endpoint.
"""

from __future__ import annotations

import pandas as pd

from sso.config import SSOConfig
from sso.data.principle_writer import PrincipleModel, build_principle_model, generic_fallback, write_principles
from sso.data.principles import build_catalogue_principles
from sso.data.verifiable import build_verifiable_principles


def generate_principles(queries: pd.DataFrame, cfg: SSOConfig, *, model_path: str | None = None,
                        principle_model: PrincipleModel | None = None) -> pd.DataFrame:
    p = cfg.principles
    catalogue = build_catalogue_principles(queries, seed=cfg.run.seed, k=p.n_features,
                                           concision_prob=p.concision_prob)
    if p.source == "catalogue":
        return catalogue
    if p.source == "verifiable":
        return build_verifiable_principles(queries, seed=cfg.run.seed, rule_ids=p.rules or None)
    fallback = catalogue if p.fallback == "catalogue" else generic_fallback(list(queries["query_id"]))
    own = principle_model is None
    principle_model = principle_model or build_principle_model(
        p, policy_model_path=model_path, model_cfg=cfg.model, sampling_cfg=cfg.sampling, seed=cfg.run.seed)
    try:
        return write_principles(queries, principle_model, cfg.generation_params("principles"), fallback)
    finally:
        if own:
            principle_model.close()

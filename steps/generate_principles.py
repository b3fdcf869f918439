"""Step ``generate_principles``: one good/bad principle pair per train query.

Inputs: ``queries`` (query_id, prompt) and the config (``[principles]``, the run seed, and for
model-written principles ``[model]``/``[sampling]`` and the policy model path: the principle
model defaults to the policy itself), or an injected principle model.
Output: ``principles`` DataFrame, one row per query in query order, with at least query_id,
features, good_principle, bad_principle (complete system messages) and source (``catalogue``,
``model``, ``fallback`` or ``verifiable``; verifiable rows add the ``rule_id`` a rule judge checks); model-written rows add the parsed guidelines, the fallback reason and
the raw replies (see :mod:`sso.data.principle_writer`). Side effects: a model-written source reads and writes the principle cache (``store``: the flow's
datastore; :mod:`sso.data.principle_cache`) and, for the requests it does not hold, loads the
principle model or sends requests to the configured endpoint. An injected ``principle_model`` is
used as given (no cache; the caller closes it).
"""

from __future__ import annotations

import json
import logging

import pandas as pd

from sso.config import SSOConfig
from sso.data.principle_cache import CachedPrincipleModel
from sso.data.principle_writer import PrincipleModel, build_principle_model, generic_fallback, write_principles
from sso.data.principles import build_catalogue_principles
from sso.data.verifiable import build_verifiable_principles

log = logging.getLogger("sso.data")


def generate_principles(queries: pd.DataFrame, cfg: SSOConfig, *, model_path: str | None = None,
                        principle_model: PrincipleModel | None = None, store=None) -> pd.DataFrame:
    p = cfg.principles
    catalogue = build_catalogue_principles(queries, seed=cfg.run.seed, k=p.n_features,
                                           concision_prob=p.concision_prob)
    if p.source == "catalogue":
        return catalogue
    if p.source == "verifiable":
        return build_verifiable_principles(queries, seed=cfg.run.seed, rule_ids=p.rules or None)
    fallback = catalogue if p.fallback == "catalogue" else generic_fallback(list(queries["query_id"]))
    if principle_model is not None:
        return write_principles(queries, principle_model, cfg.generation_params("principles"), fallback)
    cached = cached_principle_model(cfg, model_path, store)
    try:
        out = write_principles(queries, cached, cfg.generation_params("principles"), fallback)
    finally:
        cached.close()
    log.info("principle requests: %d from the cache, %d asked", cached.hits, cached.asked)
    return out


def cached_principle_model(cfg: SSOConfig, model_path: str | None, store=None) -> CachedPrincipleModel:
    """The configured principle model behind the principle cache (``store``, the flow's datastore,
    else ``~/.cache/sso-flow/principles``); built only on the first uncached request."""
    from sso.cache import JSONCache, cache_tiers
    from sso.models.tiny import default_cache_dir

    p = cfg.principles
    if p.backend == "openai":
        identity, name = ["openai", p.base_url, p.model], f"openai:{p.model}"
    else:
        identity, name = [p.backend, p.model or model_path, cfg.run.seed], p.model or "policy"
    cache = JSONCache(cache_tiers(None, store, default_cache_dir() / "principles"))

    def factory():
        return build_principle_model(p, policy_model_path=model_path, model_cfg=cfg.model,
                                     sampling_cfg=cfg.sampling, seed=cfg.run.seed)

    return CachedPrincipleModel(factory, cache, json.dumps(identity), name)

"""Step ``generate_principles``: one good/bad principle pair per train query.

Inputs: ``queries`` (query_id, prompt), ``PrinciplesConfig`` and the run seed.
Output: ``principles`` DataFrame (query_id, features, good_principle, bad_principle, source), one
row per query in query order; the principles are complete system messages. No side effects.
"""

from __future__ import annotations

import pandas as pd

from sso.config import PrinciplesConfig
from sso.principles import build_catalogue_principles


def generate_principles(queries: pd.DataFrame, cfg: PrinciplesConfig, *, seed: int) -> pd.DataFrame:
    if cfg.source == "catalogue":
        return build_catalogue_principles(queries, seed=seed, k=cfg.n_features,
                                          concision_prob=cfg.concision_prob)
    raise ValueError(f"[principles] source {cfg.source!r} is not supported")

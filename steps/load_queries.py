"""Step ``load_queries``: read, clean and split the queries.

Inputs: ``DataConfig`` (source, format, columns, sizes) and the run seed.
Outputs: ``queries`` (train / policy-stage queries; column ``generator`` marks the first
``n_generator_queries`` that also train the data generator), ``eval_queries`` (held out for the
judge), and a ``report`` dict with every count (rows read, blank, too long, duplicates, kept,
skipped ids). No side effects.
"""

from __future__ import annotations

import pandas as pd

from sso.config import DataConfig
from sso.data.queries import clean_queries, load_query_table, split_queries


def load_queries(cfg: DataConfig, *, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    table = load_query_table(cfg.source, text_column=cfg.text_column,
                             id_column=cfg.id_column or None, fmt=cfg.format)
    cleaned, report = clean_queries(table, max_chars=cfg.max_query_chars, dedupe=cfg.dedupe)
    train, evals = split_queries(cleaned, n_train=cfg.n_queries, n_eval=cfg.n_eval, seed=seed)
    n_gen = cfg.n_generator_queries or len(train)
    train = train.assign(generator=[i < n_gen for i in range(len(train))])
    report = {**report, "n_train": len(train), "n_generator": int(train["generator"].sum()),
              "n_eval": len(evals), "source": cfg.source}
    return train, evals, report

"""Step ``load_queries``: read, clean and split the queries.

Inputs: ``DataConfig`` (source, format, encoding, columns, sizes) and the run seed.
Outputs: ``queries`` (train / policy-stage queries; column ``generator`` marks the first
``n_generator_queries`` that also train the data generator), ``eval_queries`` (held out for the
judge), and a ``report`` dict with every count: ``rows_read``, one count per skip reason
(``invalid_json``, ``not_an_object``, ``wrong_field_count``, ``nul_byte``, ``not_a_string``,
``blank``, ``too_long``, ``duplicates``), ``kept``, ``skipped_ids`` / ``skipped_lines`` (first ids
and 1-based lines per reason), ``skip_notes``, ``line_unit``, ``summary`` (one readable line),
``n_train``, ``n_generator``, ``n_eval`` and ``source``.
Side effects: logs ``summary`` once on the ``sso.data`` logger (a warning when rows were skipped).
Errors: :class:`sso.data.queries.DataError` (a ``ValueError``) with the file, the line and the
fix; too few usable queries names the count skipped per reason.
"""

from __future__ import annotations

import logging

import pandas as pd

from sso.config import DataConfig
from sso.data.queries import SKIP_REASONS, clean_queries, load_query_records, split_queries

log = logging.getLogger("sso.data")


def load_queries(cfg: DataConfig, *, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    records = load_query_records(cfg.source, text_column=cfg.text_column,
                                 id_column=cfg.id_column or None, fmt=cfg.format,
                                 encoding=cfg.encoding)
    cleaned, report = clean_queries(records.table, max_chars=cfg.max_query_chars,
                                    dedupe=cfg.dedupe, origin=records)
    skipped = sum(report[r] for r in SKIP_REASONS)
    (log.warning if skipped else log.info)("%s", report["summary"])
    train, evals = split_queries(cleaned, n_train=cfg.n_queries, n_eval=cfg.n_eval, seed=seed,
                                 report=report, eval_seed=cfg.eval_seed)
    n_gen = cfg.n_generator_queries or len(train)
    train = train.assign(generator=[i < n_gen for i in range(len(train))])
    report = {**report, "n_train": len(train), "n_generator": int(train["generator"].sum()),
              "n_eval": len(evals), "source": cfg.source}
    return train, evals, report

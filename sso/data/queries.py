"""User queries: loading, cleaning and the train/eval split, with every skipped row explained.

SSO samples every query under a good and a bad principle, so the pipeline starts from a plain list
of user instructions. This module turns a query source into a uniform table and prepares it.

Inputs
    ``source`` is either ``"builtin"`` (the query set shipped in ``sso/data/queries.jsonl``: 260
    English instructions written for this project, 26 in each of ten categories, with stable ids
    ``q0001`` ... and a ``category`` field) or a path to

    - a ``.jsonl`` / ``.ndjson`` / ``.json`` file: one JSON object per line (blank lines are
      skipped); a ``.json`` file whose first character is ``[`` is read as a JSON array of
      objects instead (a ``.jsonl`` / ``.ndjson`` file holding an array is refused);
    - a ``.csv`` file with a header row (every cell is read as text, empty cells are blank);
    - a ``.parquet`` file;
    - a directory written by Hugging Face ``datasets`` ``save_to_disk`` (recognised by its
      ``dataset_info.json`` / ``state.json``; a ``DatasetDict`` directory is accepted when it holds
      exactly one split, otherwise pass the split's sub-directory). Needs the optional
      ``datasets`` package.

    ``fmt`` overrides the detection from the file name (``"jsonl"``, ``"csv"``, ``"parquet"``,
    ``"hf"``; ``"json"`` is an alias of ``"jsonl"``). ``encoding`` (default UTF-8, BOM or not)
    names the codec of JSONL/CSV files. ``text_column`` names the field holding the instruction;
    ``id_column`` (optional; ``None`` or ``""`` means none) names a field with ids. Without one,
    ids are derived from the position among the rows read: ``q00000``, ``q00001``, ... (0-based),
    so they are stable for an unchanged file. The builtin set always uses its own ``prompt`` and
    ``id`` fields (a file literally called ``builtin`` can be loaded as ``./builtin``).

Outputs
    :func:`load_query_records` returns a :class:`QueryRecords`: the ``query_id`` / ``prompt`` /
    ``source`` table (``prompt`` holds the raw value, possibly None or not a string), the 1-based
    line (row, for Parquet and ``datasets``) of each table row, and the lines of the rows the
    reader skipped, by reason (``invalid_json``, ``not_an_object``, ``nul_byte``,
    ``wrong_field_count``; the policy is in :mod:`sso.data.readers`). :func:`load_query_table`
    returns only the table and is strict: any skipped row raises.

    :func:`clean_queries` strips prompts and drops, counting each, prompts that are not strings
    (``not_a_string``: null, numbers, lists, objects), hold a NUL character (``nul_byte``), are
    empty after stripping (``blank``), longer than ``max_chars`` after stripping (``too_long``) or
    duplicates (``duplicates``: compared case-insensitively with runs of whitespace collapsed; the
    first occurrence is kept). Its report has ``rows_read``, one count per reason in
    :data:`SKIP_REASONS`, ``kept`` (``rows_read`` is their sum), ``skipped_ids`` (reason -> first
    20 ids), ``skipped_lines`` (reason -> first 5 lines), ``skip_notes`` (reason -> what was
    wrong), ``line_unit`` (``"line"`` or ``"row"``) and ``summary`` (one readable line).

    :func:`split_queries` draws disjoint train and eval sets with a seeded permutation of the
    rows sorted by ``query_id``, so the result depends only on the ids, the sizes and the seed.

Errors are :class:`DataError` (a ``ValueError``): one paragraph saying what is wrong, where
(``file:line``) and the fix. A missing source raises :class:`DataFileNotFoundError` (also a
``FileNotFoundError``), a ``datasets`` directory without the package a ``DataDependencyError``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from sso.data.readers import (
    DataDependencyError,
    DataError,
    DataFileNotFoundError,
    check_encoding,
    location,
)
from sso.data.sources import (
    FORMATS,
    build_query_table,
    detect_format,
    lines_text,
    read_rows,
    skip_list,
)

__all__ = [
    "BUILTIN_SOURCE",
    "SKIP_REASONS",
    "DataError",
    "DataFileNotFoundError",
    "DataDependencyError",
    "QueryRecords",
    "builtin_queries_path",
    "load_query_records",
    "load_query_table",
    "clean_queries",
    "render_query_summary",
    "split_queries",
]

BUILTIN_SOURCE = "builtin"
READ_REASONS: tuple[str, ...] = ("invalid_json", "not_an_object", "wrong_field_count")
CLEAN_REASONS: tuple[str, ...] = ("nul_byte", "not_a_string", "blank", "too_long", "duplicates")
SKIP_REASONS: tuple[str, ...] = READ_REASONS + CLEAN_REASONS
MAX_LISTED_SKIPS = 20   # ids per reason in the report
MAX_LISTED_LINES = 5    # lines per reason in the report and the summary

_CLEAN_NOTES = {"nul_byte": "holds a NUL character", "blank": "empty or whitespace only",
                "duplicates": "same text as an earlier query (case and spacing ignored)"}


def builtin_queries_path() -> Path:
    """Path of the shipped query set (``sso/data/queries.jsonl``)."""
    return Path(__file__).resolve().parent / "queries.jsonl"


@dataclass(frozen=True)
class QueryRecords:
    """A loaded query source: the table, where each row came from, and what could not be read.

    ``lines[i]`` is the 1-based line (``unit == "line"``) or row (``unit == "row"``) of
    ``table.iloc[i]``; ``rejected`` maps a reason to the 1-based lines skipped while reading and
    ``notes`` a reason to what was wrong with its first line.
    """

    table: pd.DataFrame
    lines: tuple[int, ...]
    rejected: Mapping[str, tuple[int, ...]]
    notes: Mapping[str, str]
    unit: str
    source: str


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def load_query_records(source: str, *, text_column: str = "prompt", id_column: str | None = None,
                       fmt: str = "auto", encoding: str = "utf-8") -> QueryRecords:
    """Read queries from ``source``, skipping and recording rows that cannot be read.

    See the module docstring for the accepted sources, and :mod:`sso.data.readers` for what is
    skipped and what fails.
    """
    if not isinstance(source, (str, Path)) or str(source).strip() == "":
        raise DataError(f"[data] source must be 'builtin' or a non-empty path, got {source!r}")
    if not isinstance(text_column, str) or text_column.strip() == "":
        raise DataError(f"[data] text_column must be a non-empty string, got {text_column!r}")
    if id_column is not None and not isinstance(id_column, str):
        raise DataError(f"[data] id_column must be a string or empty, got {id_column!r}")
    if not isinstance(fmt, str) or fmt.strip().lower() not in FORMATS:
        raise DataError(f"[data] format (fmt=) must be one of {', '.join(FORMATS)}; got {fmt!r}")
    fmt = "jsonl" if fmt.strip().lower() == "json" else fmt.strip().lower()
    encoding = check_encoding(encoding)

    if isinstance(source, str) and source.strip() == BUILTIN_SOURCE:
        path = builtin_queries_path()
        if not path.is_file():
            raise DataFileNotFoundError(f"builtin query file is missing from the package: {path}")
        fmt, text_column, id_col, encoding, label = "jsonl", "prompt", "id", "utf-8", BUILTIN_SOURCE
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataFileNotFoundError(
                f"query source not found: {path}; set [data] source to an existing file or "
                f"directory, or to \"builtin\"")
        fmt = detect_format(path) if fmt == "auto" else fmt
        id_col, label = id_column or None, str(path)
    raw = read_rows(path, fmt, text_column=text_column, id_column=id_col, encoding=encoding)
    table = build_query_table(raw, path, text_column, id_col, label)
    return QueryRecords(table=table, lines=tuple(w for w, _ in raw.records),
                        rejected={k: tuple(v) for k, v in raw.rejected.items()},
                        notes=dict(raw.notes), unit=raw.unit, source=label)


def load_query_table(source: str, *, text_column: str = "prompt", id_column: str | None = None,
                     fmt: str = "auto", encoding: str = "utf-8") -> pd.DataFrame:
    """The ``query_id`` / ``prompt`` / ``source`` table of :func:`load_query_records`, strictly.

    Raises :class:`DataError` naming the first line that could not be read, if any was skipped.
    """
    rec = load_query_records(source, text_column=text_column, id_column=id_column, fmt=fmt,
                             encoding=encoding)
    if rec.rejected:
        reason = min(rec.rejected, key=lambda r: rec.rejected[r][0])
        n_bad = sum(len(v) for v in rec.rejected.values())
        raise DataError(
            f"{location(rec.source, rec.unit, rec.rejected[reason][0])}: "
            f"{rec.notes.get(reason, reason)}; {n_bad} row(s) cannot be read "
            f"({skip_list(dict(rec.rejected), rec.unit)}). Fix them, or load with "
            f"load_query_records, which skips and counts them.")
    return rec.table


# --------------------------------------------------------------------------------------------
# cleaning
# --------------------------------------------------------------------------------------------

def _check_frame(df: Any, needed: tuple[str, ...], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{what} needs a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}; columns: {list(df.columns)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _value_type(value: Any) -> str:
    """JSON-style name of a non-string prompt value: null, number, NaN, boolean, list, object."""
    if value is None or value is pd.NA:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, numbers.Number):
        return "NaN" if isinstance(value, float) and math.isnan(value) else "number"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "list"
    return "object" if isinstance(value, dict) else type(value).__name__


def _skip_reason(prompt: Any, max_chars: int) -> str | None:
    if not isinstance(prompt, str):
        return "not_a_string"
    if "\x00" in prompt:
        return "nul_byte"
    if prompt.strip() == "":
        return "blank"
    return "too_long" if len(prompt.strip()) > max_chars else None


def clean_queries(df: pd.DataFrame, *, max_chars: int, dedupe: bool = True,
                  origin: QueryRecords | None = None) -> tuple[pd.DataFrame, dict]:
    """Strip prompts and drop unusable ones, counting every drop by reason with its line.

    The checks (see the module docstring) run in the order of :data:`CLEAN_REASONS` and each row
    is counted once. ``origin`` is the :class:`QueryRecords` ``df`` was loaded as (``df`` is its
    table or a copy in the same order): it supplies the 1-based lines and the rows skipped while
    reading. Without it, lines are 1-based positions in ``df`` (``line_unit == "row"``). Other
    columns are kept unchanged; the returned frame has a fresh index and a ``str`` prompt column.
    """
    _check_frame(df, ("query_id", "prompt"), "clean_queries")
    if not _is_int(max_chars) or max_chars < 1:
        raise DataError(f"max_chars ([data] max_query_chars) must be a positive integer, "
                        f"got {max_chars!r}")
    if not isinstance(dedupe, (bool, np.bool_)):
        raise DataError(f"dedupe must be a bool, got {dedupe!r}")
    if origin is not None and len(origin.lines) != len(df):
        raise DataError(f"clean_queries: origin has {len(origin.lines)} rows but df has {len(df)}")
    lines = list(origin.lines) if origin is not None else list(range(1, len(df) + 1))
    skipped: dict[str, list[tuple[int, str]]] = {r: [] for r in SKIP_REASONS}
    notes: dict[str, str] = {}
    if origin is not None:
        for reason, where in origin.rejected.items():
            skipped.setdefault(reason, []).extend((n, "") for n in where)
        notes.update(origin.notes)
    keep_rows, kept_text, seen, bad_types = [], [], set(), {}
    for pos, (qid, prompt) in enumerate(zip(df["query_id"].tolist(), df["prompt"].tolist())):
        reason = _skip_reason(prompt, max_chars)
        if reason is None and dedupe:
            key = " ".join(prompt.split()).casefold()
            reason = "duplicates" if key in seen else None
            seen.add(key)
        if reason is not None:
            skipped[reason].append((lines[pos], str(qid)))
            if reason == "not_a_string":
                bad_types.setdefault(_value_type(prompt), None)
            continue
        keep_rows.append(pos)
        kept_text.append(prompt.strip())
    notes.update({"not_a_string": "got " + ", ".join(bad_types),
                  "too_long": f"over max_query_chars = {max_chars} characters after stripping",
                  **{r: notes.get(r, n) for r, n in _CLEAN_NOTES.items()}})
    out = df.iloc[keep_rows].reset_index(drop=True).copy()
    out["prompt"] = pd.Series(kept_text, dtype="str")
    n_rejected = sum(len(v) for v in origin.rejected.values()) if origin is not None else 0
    report = _clean_report(skipped, notes, rows_read=len(df) + n_rejected, kept=len(out),
                           unit=origin.unit if origin is not None else "row")
    report["summary"] = render_query_summary(report, origin.source if origin is not None else "")
    return out, report


def _clean_report(skipped: Mapping[str, list[tuple[int, str]]], notes: Mapping[str, str], *,
                  rows_read: int, kept: int, unit: str) -> dict:
    """The report of :func:`clean_queries` (keys in the module docstring); sorts ``skipped``."""
    for items in skipped.values():
        items.sort()
    return {
        "rows_read": int(rows_read),
        **{r: len(skipped[r]) for r in SKIP_REASONS},
        "kept": int(kept),
        "skipped_ids": {r: [q for _, q in skipped[r] if q][:MAX_LISTED_SKIPS]
                        for r in CLEAN_REASONS},
        "skipped_lines": {r: [n for n, _ in skipped[r][:MAX_LISTED_LINES]] for r in SKIP_REASONS},
        "skip_notes": {r: notes[r] for r in SKIP_REASONS if skipped[r] and r in notes},
        "line_unit": unit,
    }


def render_query_summary(report: Mapping[str, Any], source: str = "") -> str:
    """One line: rows read, kept, and per skip reason its count, first lines and what was wrong."""
    unit = report.get("line_unit", "line")
    head = f"queries from {source}: " if source else "queries: "
    head += f"{report['rows_read']} rows read, {report['kept']} kept"
    parts = []
    for reason in SKIP_REASONS:
        count = report.get(reason, 0)
        if count:
            where = lines_text(report["skipped_lines"][reason], count, unit, MAX_LISTED_LINES)
            note = report.get("skip_notes", {}).get(reason)
            parts.append(f"{reason} {count} ({where}{'; ' + note if note else ''})")
    if not parts:
        return head + ", none skipped"
    return f"{head}; skipped {sum(report.get(r, 0) for r in SKIP_REASONS)}: " + ", ".join(parts)


# --------------------------------------------------------------------------------------------
# splitting
# --------------------------------------------------------------------------------------------

def _check_split_sizes(n_train: Any, n_eval: Any, seed: Any) -> None:
    if not _is_int(n_train) or n_train < 1:
        raise DataError(f"n_train must be an integer >= 1, got {n_train!r}")
    if not _is_int(n_eval) or n_eval < 0:
        raise DataError(f"n_eval must be an integer >= 0, got {n_eval!r}")
    if not _is_int(seed) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")


def split_queries(df: pd.DataFrame, *, n_train: int, n_eval: int, seed: int,
                  report: Mapping[str, Any] | None = None,
                  eval_seed: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Disjoint train and eval sets drawn with a seeded permutation.

    The rows are sorted by ``query_id`` and permuted with ``numpy.random.default_rng(seed)``;
    train takes the first ``n_train`` positions of the permutation and eval the next ``n_eval``.
    The result therefore depends only on the set of ids, the sizes and the seed, not on the input
    row order. Both frames keep all columns, in permutation order, with a fresh index.
    With ``eval_seed`` the eval set is drawn first, by its own permutation, and the train set from
    the rest with ``seed``: the eval queries then depend only on the ids, ``n_eval`` and
    ``eval_seed``, so a sweep over run seeds (or train sizes) is judged on the same queries.
    ``report`` (from :func:`clean_queries`) only serves the error for too few rows, which then
    says what was skipped and why.
    """
    _check_frame(df, ("query_id",), "split_queries")
    _check_split_sizes(n_train, n_eval, seed)
    if df["query_id"].isna().any():
        raise DataError("split_queries: query_id contains missing values")
    ids = df["query_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"split_queries: query_id values must be unique; "
                        f"duplicated: {sorted(set(dup))[:10]}")
    available = len(df)
    asked = n_train + n_eval
    if asked > available:
        msg = (f"asked for {asked} queries (n_train={n_train} + n_eval={n_eval}) but only "
               f"{available} are available")
        if report is not None:
            summary = report.get("summary") or render_query_summary(report)
            msg += f" ({summary})"
        raise DataError(msg + ". Fix or replace the skipped rows, add queries, or lower "
                              "[data] n_queries / n_eval.")

    order = np.argsort(ids.to_numpy(dtype=object), kind="stable")
    ordered = df.iloc[order].reset_index(drop=True)
    if eval_seed is None:
        perm = np.random.default_rng(int(seed)).permutation(available)
        return (ordered.iloc[perm[:n_train]].reset_index(drop=True),
                ordered.iloc[perm[n_train:asked]].reset_index(drop=True))
    eval_perm = np.random.default_rng(int(eval_seed)).permutation(available)
    rest = np.sort(eval_perm[n_eval:])
    train_pos = rest[np.random.default_rng(int(seed)).permutation(len(rest))[:n_train]]
    return (ordered.iloc[train_pos].reset_index(drop=True),
            ordered.iloc[eval_perm[:n_eval]].reset_index(drop=True))

"""Query sources: format detection, the per-format readers, and the query table built from rows.

:func:`read_rows` reads one source (a JSONL / JSON / CSV file through :mod:`sso.data.readers`, a
Parquet file, or a ``datasets`` ``save_to_disk`` directory) into :class:`RawRows`;
:func:`build_query_table` turns those rows into the ``query_id`` / ``prompt`` / ``source`` table.
Parquet and ``datasets`` rows are numbered 1-based (``unit == "row"``); their strings are UTF-8 by
the formats' own definition, so ``encoding`` does not apply to them. Errors are
:class:`~sso.data.readers.DataError`, naming the source, the line or row, and the fix.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from sso.data.readers import (
    DataDependencyError,
    DataError,
    RawRows,
    decode_text,
    location,
    read_csv_text,
    read_json_text,
)

__all__ = ["FORMATS", "build_query_table", "detect_format", "lines_text", "missing_column_message",
           "read_rows", "skip_list"]

FORMATS = ("auto", "jsonl", "json", "csv", "parquet", "hf")
_SUFFIX_FORMATS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
}
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def detect_format(path: Path) -> str:
    """``"jsonl"``, ``"csv"``, ``"parquet"`` or ``"hf"`` from the file name (or directory markers)."""
    if path.is_dir():
        if any((path / m).is_file() for m in _HF_MARKERS):
            return "hf"
        raise DataError(
            f"{path} is a directory but not a Hugging Face `datasets` save_to_disk directory "
            f"(none of {', '.join(_HF_MARKERS)} found); pass a .jsonl, .csv or .parquet file")
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {path} from its extension {path.suffix!r}; use one of "
            f"{', '.join(sorted(_SUFFIX_FORMATS))} or set [data] format = "
            f"\"jsonl\"|\"csv\"|\"parquet\"|\"hf\" (fmt= in Python)")
    return fmt


def missing_column_message(path: Path, role: str, column: str, available: list[str]) -> str:
    """'<path>: text column 'x' not found; available columns: [...]' plus the likely fix."""
    msg = f"{path}: {role} column {column!r} not found; available columns: {list(available)}."
    near = [c for c in available if str(c).strip().casefold() == column.strip().casefold()]
    near = near or difflib.get_close_matches(column, [str(c) for c in available], n=1)
    if len(available) == 1 and any(d in str(available[0]) for d in ";\t|"):
        msg += (" The header has a single column: the file seems to use another separator than "
                "',' (convert it to comma-separated CSV, or to JSONL).")
    elif near:
        msg += f" Did you mean {near[0]!r}? Set [data] {role}_column = {json.dumps(str(near[0]))}."
    else:
        msg += f" Set [data] {role}_column to one of them."
    return msg


def read_rows(path: Path, fmt: str, *, text_column: str, id_column: str | None,
              encoding: str = "utf-8") -> RawRows:
    """Read ``path`` as ``fmt`` (``jsonl`` covers JSON arrays too); ``encoding`` for text files."""
    if fmt == "hf":
        if not path.is_dir():
            raise DataError(f"format 'hf' needs a directory written by save_to_disk, got file {path}")
        return _read_hf(path, text_column, id_column)
    if not path.is_file():
        raise DataError(f"format {fmt!r} needs a file, but {path} is a directory")
    if fmt == "parquet":
        return _read_parquet(path, text_column, id_column)
    if fmt not in ("csv", "jsonl"):
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS[1:])}")
    text = decode_text(path.read_bytes(), path, encoding)
    if fmt == "csv":
        return read_csv_text(path, text, (text_column, id_column))
    return read_json_text(path, text)


def _rows_from_columns(data: dict[str, list], n: int, columns: list[str]) -> RawRows:
    records = [(i + 1, {k: v[i] for k, v in data.items()}) for i in range(n)]
    return RawRows(tuple(columns), records, unit="row")


def _wanted(path: Path, text_column: str, id_column: str | None, names: list[str]) -> list[str]:
    if text_column not in names:  # report it without reading the whole file
        raise DataError(missing_column_message(path, "text", text_column, names))
    return [c for c in dict.fromkeys([text_column, id_column]) if c is not None and c in names]


def _read_parquet(path: Path, text_column: str, id_column: str | None) -> RawRows:
    import pyarrow.parquet as pq  # lazy: only needed for parquet input

    try:
        names = list(pq.read_schema(path).names)
        cols = _wanted(path, text_column, id_column, names)
        table = pq.read_table(path, columns=cols)
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: cannot read Parquet file: {exc}; check that it is a Parquet "
                        f"file (or name it after its real format)") from None
    data = {c: table.column(c).to_pylist() for c in cols}
    return _rows_from_columns(data, table.num_rows, names)


def _read_hf(path: Path, text_column: str, id_column: str | None) -> RawRows:
    try:
        import datasets  # lazy: optional dependency
    except ImportError:
        raise DataDependencyError(
            f"{path} looks like a Hugging Face `datasets` directory; reading it needs the "
            f"'datasets' package (pip install datasets), or export the data to JSONL/CSV/Parquet"
        ) from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: cannot load with datasets.load_from_disk: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        if len(splits) != 1:
            raise DataError(
                f"{path} is a DatasetDict with splits {splits}; pass the directory of one split, "
                f"e.g. {path / splits[0]}" if splits else f"{path} is an empty DatasetDict")
        ds = ds[splits[0]]
    names = list(ds.column_names)
    cols = _wanted(path, text_column, id_column, names)
    data = ds.select_columns(cols).to_dict()
    return _rows_from_columns({c: list(data[c]) for c in cols}, len(ds), names)


# --------------------------------------------------------------------------------------------
# rows -> table
# --------------------------------------------------------------------------------------------

def lines_text(lines: Any, total: int, unit: str, listed: int = 5) -> str:
    """``"lines 4, 9, ... 3 more"`` (``unit`` is "line" or "row"); ``total`` counts all of them."""
    shown = ", ".join(str(n) for n in list(lines)[:listed])
    more = f", ... {total - listed} more" if total > listed else ""
    return f"{unit}{'s' if total > 1 else ''} {shown}{more}"


def skip_list(rejected: dict[str, Any], unit: str) -> str:
    """``"invalid_json 2 (lines 4, 9), not_an_object 1 (line 7)"`` for reason -> lines."""
    return ", ".join(f"{r} {len(v)} ({lines_text(v, len(v), unit)})" for r, v in rejected.items())


def build_query_table(raw: RawRows, path: Path, text_column: str, id_column: str | None,
                      label: str) -> pd.DataFrame:
    """The query table of ``raw``; DataError for no rows, a missing column or a bad id.

    Ids come from ``id_column`` (stripped text; ``3.0`` reads ``"3"``) or, without one, from the
    0-based position among the rows read: ``q00000``, ``q00001``, ...
    """
    if not raw.records:
        skipped = f": every row was skipped ({skip_list(raw.rejected, raw.unit)})" \
            if raw.rejected else " (no data rows)"
        raise DataError(f"{path} contains no queries{skipped}. Each row needs a text field "
                        f"{text_column!r}, e.g. {{\"{text_column}\": \"Write a haiku.\"}}.")
    for col, role in ((text_column, "text"), (id_column, "id")):
        if col is not None and col not in raw.columns:
            raise DataError(missing_column_message(path, role, col, list(raw.columns)))
    prompts = [row.get(text_column) for _, row in raw.records]
    ids = [f"q{pos:05d}" for pos in range(len(raw.records))] if id_column is None \
        else _ids(raw, path, id_column)
    return pd.DataFrame({
        "query_id": pd.Series(ids, dtype="str"),
        "prompt": pd.Series(prompts, dtype=object),
        "source": pd.Series([label] * len(ids), dtype="str"),
    })


def _ids(raw: RawRows, path: Path, id_column: str) -> list[str]:
    ids: list[str] = []
    first_seen: dict[str, int] = {}
    u = raw.unit
    for where, row in raw.records:
        value = row.get(id_column)
        if value is None or (isinstance(value, float) and math.isnan(value)) \
                or str(value).strip() == "":
            raise DataError(f"{location(path, u, where)}: missing value in id column "
                            f"{id_column!r}; give every row an id, or leave [data] id_column "
                            f"empty to number the rows")
        qid = str(int(value)) if isinstance(value, float) and value.is_integer() \
            else str(value).strip()
        if qid in first_seen:
            raise DataError(
                f"{location(path, u, where)}: duplicate query id {qid!r} at {u} "
                f"{first_seen[qid]} and {u} {where}; ids in id column {id_column!r} must be "
                f"unique (or leave [data] id_column empty to number the rows)")
        first_seen[qid] = where
        ids.append(qid)
    return ids

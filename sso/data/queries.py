"""User queries: loading, cleaning and the train/eval split.

SSO samples every query under a good and a bad principle, so the pipeline starts from a plain list
of user instructions. This module turns a query source into a uniform table and prepares it.

Inputs
    ``source`` for :func:`load_query_table` is either ``"builtin"`` (the query set shipped in
    ``sso/data/queries.jsonl``: 260 English instructions written for this project, 26 in each
    of ten categories, with stable ids ``q0001`` ... and a ``category`` field) or a path to

    - a ``.jsonl`` / ``.ndjson`` / ``.json`` file: one JSON object per line (blank lines are
      skipped); a ``.json`` file whose first character is ``[`` is read as a JSON array of
      objects instead;
    - a ``.csv`` file with a header row (every cell is read as text, empty cells are blank);
    - a ``.parquet`` file;
    - a directory written by Hugging Face ``datasets`` ``save_to_disk`` (recognised by its
      ``dataset_info.json`` / ``state.json``; a ``DatasetDict`` directory is accepted when it holds
      exactly one split, otherwise pass the split's sub-directory). Needs the optional
      ``datasets`` package.

    ``fmt`` overrides the detection from the file name (``"jsonl"``, ``"csv"``, ``"parquet"``,
    ``"hf"``; ``"json"`` is an alias of ``"jsonl"``). ``text_column`` names the field holding
    the instruction; ``id_column`` (optional; ``None`` or ``""`` means none) names a field with
    ids. Without one, ids are derived from the row position: ``q00000``, ``q00001``, ... (0-based,
    counting data rows only), so they are stable for an unchanged file. The builtin set always
    uses its own ``prompt`` and ``id`` fields; ``text_column`` and ``id_column`` are ignored for
    it (a file literally called ``builtin`` can be loaded as ``./builtin``).

Outputs
    :func:`load_query_table` returns a DataFrame with columns ``query_id`` (str, unique),
    ``prompt`` (the raw value from the file: normally str, but may be None or another type;
    :func:`clean_queries` deals with those) and ``source`` (``"builtin"`` or the file path).
    Errors are specific: a missing file raises ``FileNotFoundError``; a malformed JSON line, a
    row that is not an object, a missing text or id column, a missing id value, a duplicate id or
    a file with no rows raise ``ValueError`` naming the file and the line (JSON lines) or the
    1-based data row (other formats).

    :func:`clean_queries` strips whitespace and drops, counting each, blank prompts (empty, None or
    not a string), prompts longer than ``max_chars`` (after stripping) and duplicates (compared
    case-insensitively with runs of whitespace collapsed; the first occurrence is kept). It returns
    the cleaned frame and a report ``{"rows_read", "blank", "too_long", "duplicates", "kept",
    "skipped_ids"}``; ``rows_read == blank + too_long + duplicates + kept`` and ``skipped_ids``
    maps each reason to the first 20 dropped ids.

    :func:`split_queries` draws disjoint train and eval sets with a seeded permutation of the
    rows sorted by ``query_id``, so the result depends only on the ids, the sizes and the seed.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "BUILTIN_SOURCE",
    "SKIP_REASONS",
    "builtin_queries_path",
    "load_query_table",
    "clean_queries",
    "split_queries",
]

BUILTIN_SOURCE = "builtin"
SKIP_REASONS: tuple[str, ...] = ("blank", "too_long", "duplicates")
MAX_LISTED_SKIPS = 20

_FORMATS = ("auto", "jsonl", "json", "csv", "parquet", "hf")
_SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def builtin_queries_path() -> Path:
    """Path of the shipped query set (``sso/data/queries.jsonl``)."""
    return Path(__file__).resolve().parent / "queries.jsonl"


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def load_query_table(
    source: str,
    *,
    text_column: str = "prompt",
    id_column: str | None = None,
    fmt: str = "auto",
) -> pd.DataFrame:
    """Read queries from ``source`` into a ``query_id`` / ``prompt`` / ``source`` table.

    See the module docstring for the accepted sources and the errors raised.
    """
    if not isinstance(source, (str, Path)) or str(source).strip() == "":
        raise ValueError(f"source must be 'builtin' or a non-empty path, got {source!r}")
    if not isinstance(text_column, str) or text_column.strip() == "":
        raise ValueError(f"text_column must be a non-empty string, got {text_column!r}")
    if id_column is not None and not isinstance(id_column, str):
        raise ValueError(f"id_column must be a string or None, got {id_column!r}")
    if not isinstance(fmt, str) or fmt.strip().lower() not in _FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(_FORMATS)}; got {fmt!r}")
    fmt = fmt.strip().lower()
    if fmt == "json":
        fmt = "jsonl"
    id_col = id_column if id_column else None

    if isinstance(source, str) and source.strip() == BUILTIN_SOURCE:
        path = builtin_queries_path()
        if not path.is_file():
            raise FileNotFoundError(f"builtin query file is missing from the package: {path}")
        return _load(path, "jsonl", text_column="prompt", id_column="id", label=BUILTIN_SOURCE)

    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"query source not found: {path}")
    if fmt == "auto":
        fmt = _detect_format(path)
    return _load(path, fmt, text_column=text_column, id_column=id_col, label=str(path))


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if any((path / m).is_file() for m in _HF_MARKERS):
            return "hf"
        raise ValueError(
            f"{path} is a directory but not a Hugging Face `datasets` save_to_disk directory "
            f"(none of {', '.join(_HF_MARKERS)} found); pass a .jsonl, .csv or .parquet file")
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {path} from its extension {path.suffix!r}; use one of "
            f"{', '.join(sorted(_SUFFIX_FORMATS))} or pass fmt='jsonl'|'csv'|'parquet'|'hf'")
    return fmt


def _load(path: Path, fmt: str, *, text_column: str, id_column: str | None,
          label: str) -> pd.DataFrame:
    """Read ``path`` as ``fmt`` and build the output table."""
    if fmt == "hf":
        if not path.is_dir():
            raise ValueError(f"fmt='hf' needs a directory written by save_to_disk, got file {path}")
    elif not path.is_file():
        raise ValueError(f"fmt={fmt!r} needs a file, but {path} is a directory")

    if fmt == "jsonl":
        columns, records = _read_json_records(path)
    elif fmt == "csv":
        columns, records = _read_csv(path, text_column, id_column)
    elif fmt == "parquet":
        columns, records = _read_parquet(path, text_column, id_column)
    elif fmt == "hf":
        columns, records = _read_hf(path, text_column, id_column)
    else:  # pragma: no cover - fmt was validated by the caller
        raise ValueError(f"unknown format {fmt!r}")

    if not records and not columns:
        raise ValueError(f"{path} contains no queries (no data rows)")
    for col, role in ((text_column, "text"), (id_column, "id")):
        if col is not None and col not in columns:
            raise ValueError(
                f"{path}: {role} column {col!r} not found; available columns: {list(columns)}")
    if not records:
        raise ValueError(f"{path} contains no queries (no data rows)")

    prompts: list[Any] = []
    ids: list[str] = []
    first_seen: dict[str, str] = {}
    for pos, (where, row) in enumerate(records):
        prompts.append(row.get(text_column))
        if id_column is None:
            qid = f"q{pos:05d}"
        else:
            raw = row.get(id_column)
            if raw is None or (isinstance(raw, float) and np.isnan(raw)) or str(raw).strip() == "":
                raise ValueError(f"{path}: {where}: missing value in id column {id_column!r}")
            qid = _id_to_str(raw)
        if qid in first_seen:
            raise ValueError(
                f"{path}: duplicate query id {qid!r} at {first_seen[qid]} and {where}")
        first_seen[qid] = where
        ids.append(qid)

    return pd.DataFrame({
        "query_id": pd.Series(ids, dtype="str"),
        "prompt": pd.Series(prompts, dtype=object),
        "source": pd.Series([label] * len(ids), dtype="str"),
    })


def _id_to_str(raw: Any) -> str:
    # 3.0 (an integer id that went through a float column) reads better as "3"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw).strip()


def _read_json_records(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    """Rows of a JSON-lines file (or a JSON array), each tagged with where it came from."""
    text = path.read_text(encoding="utf-8-sig")
    columns: dict[str, None] = {}
    records: list[tuple[str, dict]] = []

    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} "
                             f"(column {exc.colno})") from None
        for i, obj in enumerate(items, start=1):
            where = f"item {i}"
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: {where}: expected a JSON object, "
                                 f"got {type(obj).__name__}")
            columns.update(dict.fromkeys(obj))
            records.append((where, obj))
        return list(columns), records

    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: invalid JSON: {exc.msg} "
                             f"(column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, "
                             f"got {type(obj).__name__}")
        columns.update(dict.fromkeys(obj))
        records.append((f"line {lineno}", obj))
    return list(columns), records


def _wanted(text_column: str, id_column: str | None, available: list[str]) -> list[str]:
    return [c for c in dict.fromkeys([text_column, id_column]) if c is not None and c in available]


def _rows_from_columns(data: dict[str, list]) -> list[tuple[str, dict]]:
    n = len(next(iter(data.values()))) if data else 0
    return [(f"row {i + 1}", {k: v[i] for k, v in data.items()}) for i in range(n)]


def _read_csv(path: Path, text_column: str, id_column: str | None):
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} contains no queries (the CSV file is empty)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse CSV: {exc}") from None
    cols = _wanted(text_column, id_column, header)
    if not cols:
        # no requested column present: report it without reading the whole file
        raise ValueError(
            f"{path}: text column {text_column!r} not found; available columns: {header}")
    try:
        frame = pd.read_csv(path, usecols=cols, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse CSV: {exc}") from None
    data = {c: frame[c].tolist() for c in cols}
    return header, _rows_from_columns(data) if len(frame) else []


def _read_parquet(path: Path, text_column: str, id_column: str | None):
    import pyarrow.parquet as pq  # lazy: only needed for parquet input

    try:
        names = list(pq.read_schema(path).names)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"{path}: cannot read Parquet file: {exc}") from None
    cols = _wanted(text_column, id_column, names)
    if not cols:
        raise ValueError(
            f"{path}: text column {text_column!r} not found; available columns: {names}")
    table = pq.read_table(path, columns=cols)
    data = {c: table.column(c).to_pylist() for c in cols}
    return names, _rows_from_columns(data) if table.num_rows else []


def _read_hf(path: Path, text_column: str, id_column: str | None):
    try:
        import datasets  # lazy: optional dependency
    except ImportError:
        raise ImportError(
            f"{path} looks like a Hugging Face `datasets` directory; reading it needs the "
            f"'datasets' package (pip install datasets), or export the data to JSONL/CSV/Parquet"
        ) from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: cannot load with datasets.load_from_disk: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        if len(splits) != 1:
            raise ValueError(
                f"{path} is a DatasetDict with splits {splits}; pass the directory of one split, "
                f"e.g. {path / splits[0]}" if splits else f"{path} is an empty DatasetDict")
        ds = ds[splits[0]]
    names = list(ds.column_names)
    cols = _wanted(text_column, id_column, names)
    if not cols:
        raise ValueError(
            f"{path}: text column {text_column!r} not found; available columns: {names}")
    data = ds.select_columns(cols).to_dict()
    return names, _rows_from_columns({c: list(data[c]) for c in cols}) if len(ds) else []


# --------------------------------------------------------------------------------------------
# cleaning
# --------------------------------------------------------------------------------------------

def _check_frame(df: Any, needed: tuple[str, ...], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{what} needs a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; columns: {list(df.columns)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def clean_queries(df: pd.DataFrame, *, max_chars: int,
                  dedupe: bool = True) -> tuple[pd.DataFrame, dict]:
    """Strip prompts and drop blank, over-long and duplicate ones, counting every drop.

    A prompt is *blank* when it is None/NaN, not a string, or empty after stripping; *too long*
    when the stripped text has more than ``max_chars`` characters; a *duplicate* (only when
    ``dedupe``) when its case-folded, whitespace-collapsed text equals that of an earlier kept
    prompt. The checks run in that order and each row is counted once. Other columns are kept
    unchanged; the returned frame has a fresh index and a ``str`` prompt column.
    """
    _check_frame(df, ("query_id", "prompt"), "clean_queries")
    if not _is_int(max_chars) or max_chars < 1:
        raise ValueError(f"max_chars must be a positive integer, got {max_chars!r}")
    if not isinstance(dedupe, (bool, np.bool_)):
        raise ValueError(f"dedupe must be a bool, got {dedupe!r}")

    counts = {reason: 0 for reason in SKIP_REASONS}
    skipped: dict[str, list[str]] = {reason: [] for reason in SKIP_REASONS}
    keep_rows: list[int] = []
    kept_text: list[str] = []
    seen: set[str] = set()

    def drop(reason: str, qid: Any) -> None:
        counts[reason] += 1
        if len(skipped[reason]) < MAX_LISTED_SKIPS:
            skipped[reason].append(str(qid))

    for pos, (qid, prompt) in enumerate(zip(df["query_id"].tolist(), df["prompt"].tolist())):
        if not isinstance(prompt, str) or prompt.strip() == "":
            drop("blank", qid)
            continue
        text = prompt.strip()
        if len(text) > max_chars:
            drop("too_long", qid)
            continue
        if dedupe:
            key = " ".join(text.split()).casefold()
            if key in seen:
                drop("duplicates", qid)
                continue
            seen.add(key)
        keep_rows.append(pos)
        kept_text.append(text)

    out = df.iloc[keep_rows].reset_index(drop=True).copy()
    out["prompt"] = pd.Series(kept_text, dtype="str")
    report = {
        "rows_read": int(len(df)),
        "blank": counts["blank"],
        "too_long": counts["too_long"],
        "duplicates": counts["duplicates"],
        "kept": int(len(out)),
        "skipped_ids": skipped,
    }
    return out, report


# --------------------------------------------------------------------------------------------
# splitting
# --------------------------------------------------------------------------------------------

def split_queries(df: pd.DataFrame, *, n_train: int, n_eval: int,
                  seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Disjoint train and eval sets drawn with a seeded permutation.

    The rows are sorted by ``query_id`` and permuted with ``numpy.random.default_rng(seed)``;
    train takes the first ``n_train`` positions of the permutation and eval the next ``n_eval``.
    The result therefore depends only on the set of ids, the sizes and the seed, not on the input
    row order. Both frames keep all columns, in permutation order, with a fresh index.
    """
    _check_frame(df, ("query_id",), "split_queries")
    if not _is_int(n_train) or n_train < 1:
        raise ValueError(f"n_train must be an integer >= 1, got {n_train!r}")
    if not _is_int(n_eval) or n_eval < 0:
        raise ValueError(f"n_eval must be an integer >= 0, got {n_eval!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if df["query_id"].isna().any():
        raise ValueError("split_queries: query_id contains missing values")
    ids = df["query_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ValueError(f"split_queries: query_id values must be unique; "
                         f"duplicated: {sorted(set(dup))[:10]}")
    available = len(df)
    asked = n_train + n_eval
    if asked > available:
        raise ValueError(
            f"asked for {asked} queries (n_train={n_train} + n_eval={n_eval}) but only "
            f"{available} are available")

    order = np.argsort(ids.to_numpy(dtype=object), kind="stable")
    ordered = df.iloc[order].reset_index(drop=True)
    perm = np.random.default_rng(int(seed)).permutation(available)
    train = ordered.iloc[perm[:n_train]].reset_index(drop=True)
    evals = ordered.iloc[perm[n_train:asked]].reset_index(drop=True)
    return train, evals

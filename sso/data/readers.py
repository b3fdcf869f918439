"""Query text files: bytes to text to rows, with every row that cannot be read counted.

:func:`decode_text` turns a file's bytes into text; :func:`read_json_text` and
:func:`read_csv_text` turn the text into :class:`RawRows`: the column names seen, the rows as
dicts tagged with their 1-based line, and, per reason, the lines of the rows skipped.
:mod:`sso.data.sources` dispatches on the format (and reads Parquet and ``datasets`` sources, whose
rows are numbered 1-based instead); :mod:`sso.data.queries` builds the query table.

Text files (JSONL, JSON array, CSV) are decoded as UTF-8, with or without a byte-order mark, or
with the codec named by ``encoding`` (``[data] encoding``). A byte that does not decode fails with
the file, the 1-based line, the 0-based byte offset from the start of the file and how to convert
the file (``iconv``) or which encoding to set. A UTF-16/UTF-32 byte-order mark, or NUL bytes in
more than a quarter of the first 4 KiB, fail as "not UTF-8 text" before any parsing. Parquet and
``datasets`` sources store UTF-8 text themselves; ``encoding`` does not apply to them.

What is skipped, and what fails (the policy, one place):

- ``invalid_json``: a JSONL line that is not valid JSON is skipped and counted, unless more than
  half of the non-blank lines are invalid (or none is valid): then the file is not JSON lines and
  reading fails, naming the first bad lines.
- ``not_an_object``: a JSON line or array item that is valid JSON but not an object.
- ``nul_byte``: a JSONL line holding a raw NUL byte (``\\x00``). NUL bytes inside a value that
  does parse (CSV cells, Parquet strings, ``\\u0000`` escapes) reach the prompt, and
  :func:`sso.data.queries.clean_queries` skips such prompts under the same reason.
- ``wrong_field_count``: a CSV record with more or fewer cells than the header (usually an
  unquoted comma in the prompt).
- Blank lines (JSONL, CSV) are not rows: they are skipped silently and do not shift line numbers.
- Fatal, with file and line: an empty file, a file of blank lines only, bytes that do not decode,
  a JSON array (or any JSON) that does not parse as a whole in a ``.json`` file, a JSON array in a
  ``.jsonl`` / ``.ndjson`` file, a CSV quoting error (quotes are parsed strictly, so an unclosed
  quote cannot swallow the rest of the file), a requested column that no row has (with the
  closest column names).

Every intended error is a :class:`DataError` (a ``ValueError``) whose message is one paragraph:
what is wrong, where (``file:line``), and the fix. A missing source raises
:class:`DataFileNotFoundError` (also a ``FileNotFoundError``); a ``datasets`` directory without the
package raises :class:`DataDependencyError` (also an ``ImportError``).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DataError",
    "DataFileNotFoundError",
    "DataDependencyError",
    "RawRows",
    "check_encoding",
    "decode_text",
    "location",
    "read_csv_text",
    "read_json_text",
]

_JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
_UTF8 = ("utf-8", "utf-8-sig")
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_JSON_WS = re.compile(r"[ \t\n\r]*")


class DataError(ValueError):
    """A query source cannot be used; the message names the file, the line and the fix."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """The query source does not exist."""


class DataDependencyError(DataError, ImportError):
    """Reading the query source needs an optional package that is not installed."""


@dataclass(frozen=True)
class RawRows:
    """What a reader got out of one source.

    ``columns``: every key (JSON) or header cell (CSV, Parquet, ``datasets``), first-seen order.
    ``records``: ``(where, row)`` per readable row; ``where`` is the 1-based line of the row's first
    character (text files) or the 1-based row number (``unit == "row"``).
    ``rejected``: reason -> 1-based lines of the rows skipped for it, in file order.
    ``notes``: reason -> a short detail about the first row skipped for it (e.g. the JSON error).
    """

    columns: tuple[str, ...]
    records: list[tuple[int, dict]]
    rejected: dict[str, list[int]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    unit: str = "line"


def location(source: object, unit: str, n: int) -> str:
    """``"path:12"`` for a line, ``"path: row 12"`` for a row (Parquet, ``datasets``)."""
    return f"{source}:{n}" if unit == "line" else f"{source}: row {n}"


# --------------------------------------------------------------------------------------------
# bytes -> text
# --------------------------------------------------------------------------------------------

def check_encoding(encoding: str) -> str:
    """The canonical codec name of ``encoding`` (``"latin1"`` -> ``"iso8859-1"``); DataError if unknown."""
    try:
        if not isinstance(encoding, str) or not encoding.strip():
            raise LookupError(encoding)
        name = codecs.lookup(encoding.strip()).name
        "x".encode(name)  # LookupError for bytes-to-bytes codecs such as base64
    except LookupError:
        raise DataError(
            f"[data] encoding {encoding!r} is not a text encoding Python knows; use e.g. "
            f'"utf-8" (the default), "latin-1", "cp1252" or "utf-16"') from None
    return name


def decode_text(raw: bytes, path: Path, encoding: str = "utf-8") -> str:
    """Decode a text file's bytes; a UTF-8 BOM is dropped. Raises DataError naming line and byte."""
    name = check_encoding(encoding)
    if not raw:
        raise DataError(f"{path} is empty (0 bytes): it contains no queries. Point [data] source "
                        f"at a file with one query per line (JSONL) or per row (CSV).")
    skip = 0
    if name in _UTF8:
        _refuse_wide_text(raw, path)
        name, skip = "utf-8", len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[skip:].decode(name)
    except UnicodeDecodeError as exc:
        raise DataError(_decode_message(raw, path, exc, name, skip)) from None
    if not text.strip():
        raise DataError(f"{path} holds only blank lines: it contains no queries. Point [data] "
                        f"source at a file with one query per line (JSONL) or per row (CSV).")
    return text


def _refuse_wide_text(raw: bytes, path: Path) -> None:
    for bom, enc in _WIDE_BOMS:
        if raw.startswith(bom):
            raise DataError(
                f"{path}:1: not UTF-8: the file starts with a {enc.upper()} byte-order mark. "
                f"Convert it with `iconv -f {enc} -t utf-8 {path.name} > {path.stem}.utf8"
                f"{path.suffix}`, or set [data] encoding = \"{enc}\" in the config.")
    head = raw[:4096]
    if head.count(0) * 4 > len(head):
        raise DataError(
            f"{path}:1: not UTF-8 text: {head.count(0)} of the first {len(head)} bytes are NUL, "
            f"so this is UTF-16/UTF-32 text without a byte-order mark or a binary file. "
            f"Convert text with `iconv -f utf-16le -t utf-8 {path.name} > {path.stem}.utf8"
            f"{path.suffix}` (or set [data] encoding = \"utf-16-le\"); a Parquet file needs a "
            f".parquet name or [data] format = \"parquet\".")


def _decode_message(raw: bytes, path: Path, exc: UnicodeDecodeError, name: str,
                    skip: int) -> str:
    start, stop = exc.start + skip, exc.end + skip  # offsets in the file, BOM included
    line = raw.count(b"\n", 0, start) + 1
    line_start = raw.rfind(b"\n", 0, start) + 1
    line_end = raw.find(b"\n", start) % (len(raw) + 1)  # -1 (last line) -> end of file
    near = raw[max(line_start, start - 30):min(line_end, stop + 30)]
    shown = near.decode(name, errors="replace").strip("\ufeff \t\r")
    bad = " ".join(f"0x{b:02X}" for b in raw[start:stop])
    enc = "UTF-8" if name == "utf-8" else name
    if raw.startswith(b"PAR1"):
        hint = ("This looks like a Parquet file: give it a .parquet name or set "
                "[data] format = \"parquet\".")
    else:
        hint = (f"Convert it with `iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8"
                f"{path.suffix}` (use the file's real encoding in place of latin1), or set "
                f"[data] encoding = \"latin-1\" (or the real one) in the config.")
    return (f"{path}:{line}: not {enc}: byte {bad} at byte offset {start} (byte {start - line_start + 1} "
            f"of line {line}) cannot be decoded ({exc.reason}), near {shown!r}. {hint}")




# --------------------------------------------------------------------------------------------
# JSON and CSV text
# --------------------------------------------------------------------------------------------

def read_json_text(path: Path, text: str) -> RawRows:
    """Rows of a JSON-lines text, or of a JSON array (refused when ``path`` is .jsonl/.ndjson)."""
    if text.lstrip().startswith("["):
        return _read_json_array(path, text)
    return _read_json_lines(path, text)


def _read_json_lines(path: Path, text: str) -> RawRows:
    columns: dict[str, None] = {}
    records: list[tuple[int, dict]] = []
    rejected: dict[str, list[int]] = {}
    notes: dict[str, str] = {}
    nonblank = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        nonblank += 1
        reason, obj = _parse_json_line(line)
        if reason is not None:
            rejected.setdefault(reason, []).append(lineno)
            notes.setdefault(reason, obj)
            continue
        columns.update(dict.fromkeys(obj))
        records.append((lineno, obj))
    bad = rejected.get("invalid_json", [])
    if bad and (not records or 2 * len(bad) > nonblank):
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise DataError(
            f"{path}:{bad[0]}: not JSON lines: {len(bad)} of {nonblank} non-blank lines are not "
            f"valid JSON (lines {shown}; the first: {notes['invalid_json']}). A JSONL file holds one JSON "
            f"object per line, e.g. {{\"prompt\": \"...\"}}: convert pretty-printed JSON with "
            f"`jq -c . {path.name} > {path.stem}.lines.jsonl` (`jq -c '.[]'` for an array of "
            f"objects), or give a CSV file a .csv name.")
    return RawRows(tuple(columns), records, rejected, notes)


def _parse_json_line(line: str) -> tuple[str | None, Any]:
    """(None, object) or (reason, detail) for one non-blank JSONL line."""
    if "\x00" in line:
        return "nul_byte", f"NUL byte at column {line.index(chr(0)) + 1}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return "invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})"
    if not isinstance(obj, dict):
        return "not_an_object", f"expected a JSON object, got {_json_type(obj)}"
    return None, obj


def _json_type(obj: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null",
             int: "number", float: "number"}
    return names.get(type(obj), type(obj).__name__)


def _read_json_array(path: Path, text: str) -> RawRows:
    if path.suffix.lower() in _JSON_LINES_SUFFIXES:
        raise DataError(
            f"{path}:1: this file holds a JSON array, but a {path.suffix} file must hold one JSON "
            f"object per line. Rename it to {path.stem}.json (JSON arrays of objects are read "
            f"from .json files), or convert it with `jq -c '.[]' {path.name} > "
            f"{path.stem}.lines{path.suffix}`.")
    columns: dict[str, None] = {}
    records: list[tuple[int, dict]] = []
    rejected: dict[str, list[int]] = {}
    notes: dict[str, str] = {}
    for lineno, obj in _array_items(path, text):
        if not isinstance(obj, dict):
            rejected.setdefault("not_an_object", []).append(lineno)
            notes.setdefault("not_an_object", f"expected a JSON object, got {_json_type(obj)}")
            continue
        columns.update(dict.fromkeys(obj))
        records.append((lineno, obj))
    return RawRows(tuple(columns), records, rejected, notes)


def _array_items(path: Path, text: str) -> list[tuple[int, Any]]:
    """The items of a top-level JSON array, each with the 1-based line where it starts."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any]] = []
    pos = _JSON_WS.match(text, text.index("[") + 1).end()
    if text.startswith("]", pos):
        end = pos + 1
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column "
                                f"{exc.colno}); the whole JSON array is unreadable, fix that "
                                f"line") from None
            items.append((text.count("\n", 0, pos) + 1, obj))
            end = _JSON_WS.match(text, end).end()
            if not text.startswith(",", end):
                break
            pos = _JSON_WS.match(text, end + 1).end()
        if not text.startswith("]", end):
            line = text.count("\n", 0, end) + 1
            raise DataError(f"{path}:{line}: invalid JSON array: expected ',' or ']' after an "
                            f"item; fix that line")
        end += 1
    if text[end:].strip():
        line = text.count("\n", 0, end) + 1
        raise DataError(f"{path}:{line}: extra data after the JSON array ends; a .json file "
                        f"holds one array of objects")
    return items


def read_csv_text(path: Path, text: str, wanted: tuple[str | None, ...]) -> RawRows:
    """Rows of a CSV text with a header row; ``wanted`` columns must not repeat in the header.

    Quoting is parsed strictly: a stray character after a closing quote, or a quote that is
    never closed (which would swallow the rest of the file into one cell), fails with its line.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    old_limit = csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    try:
        header, records, rejected = _csv_records(path, reader)
    finally:
        csv.field_size_limit(old_limit)
    dup = [c for c in wanted if c is not None and header.count(c) > 1]
    if dup:
        raise DataError(f"{path}: the CSV header names column {dup[0]!r} "
                        f"{header.count(dup[0])} times; give every column a unique name")
    notes = {}
    if rejected:
        notes["wrong_field_count"] = (f"more or fewer cells than the {len(header)} header "
                                      f"columns (an unquoted comma or quote?)")
    return RawRows(tuple(header), records, rejected, notes)


def _csv_records(path: Path, reader) -> tuple[list[str], list[tuple[int, dict]], dict]:
    header: list[str] | None = None
    records: list[tuple[int, dict]] = []
    rejected: dict[str, list[int]] = {}
    done = 0  # physical lines consumed before the current record
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            upto = f" (the record runs to line {reader.line_num})" \
                if reader.line_num > done + 1 else ""
            raise DataError(f"{path}:{done + 1}: cannot parse CSV: {exc}{upto}; fix the "
                            f"quoting there: a cell holding a comma, a quote or a newline must "
                            f"be enclosed in double quotes, with inner quotes doubled") from None
        start, done = done + 1, reader.line_num
        if not row:
            continue  # blank line
        if header is None:
            header = row
        elif len(row) != len(header):
            rejected.setdefault("wrong_field_count", []).append(start)
        else:
            records.append((start, dict(zip(header, row))))
    if header is None:  # pragma: no cover - decode_text refuses files of blank lines
        raise DataError(f"{path} has no CSV header row")
    return header, records, rejected

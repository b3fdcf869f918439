"""Card component specs and cell formatting: the primitives every card of :mod:`sso.report.cards` is built of.

A *component spec* is a small dict that :mod:`flows.sso_cards` turns into a Metaflow card
component::

    {"type": "markdown", "text": "## ..."}
    {"type": "table", "headers": [...], "rows": [[cell, ...], ...]}     # cells: str / int / float
                                                                        # or a markdown spec (links)
    {"type": "vega", "name": "loss", "spec": {...Vega-Lite v5...}}

Nothing here imports metaflow (or torch).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Sequence

VEGA_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
TEXT_LIMIT = 160            # characters of free text per table cell
RAW_JUDGE_LIMIT = 400       # characters of raw judge text per example judgment
CHART_HEIGHT = 180


def markdown(text: str) -> dict:
    """A markdown component spec."""
    return {"type": "markdown", "text": text}


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> dict:
    """A table component spec; ValueError when a row has not one cell per header."""
    rows = [list(r) for r in rows]
    for i, r in enumerate(rows):
        if len(r) != len(headers):
            raise ValueError(f"table row {i} has {len(r)} cells, expected {len(headers)} ({list(headers)})")
    return {"type": "table", "headers": list(headers), "rows": rows}


def vega(name: str, spec: dict) -> dict:
    """A Vega-Lite chart component spec named ``name``."""
    return {"type": "vega", "name": name, "spec": spec}


def is_missing(value: Any) -> bool:
    """None or a float NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value: Any, digits: int = 3) -> str:
    """A number as table text: ints as is, floats with ``digits`` decimals, missing as ``-``."""
    if is_missing(value):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if x != 0 and abs(x) < 0.5 * 10 ** -digits:   # small but not zero: significant digits
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


def truncate(text: Any, limit: int = TEXT_LIMIT) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis and the full length."""
    if is_missing(text):
        return ""
    s = " ".join(str(text).split())
    if len(s) <= limit:
        return s
    return f"{s[:limit].rstrip()}... [{len(s)} chars]"


def plain(value: Any) -> Any:
    """numpy / pandas scalars -> Python scalars (JSON-safe); NaN -> None."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def cell_text(value: Any, missing: str = "") -> str:
    """``value`` as a table cell, ``missing`` for a missing or empty value."""
    return missing if is_missing(value) or value == "" else str(value)


def kv_table(pairs: Iterable[tuple[str, Any]], headers=("what", "value")) -> dict:
    """A two-column table of (name, value) rows; non-string values through :func:`fmt`."""
    return table(list(headers), [[k, fmt(v) if not isinstance(v, str) else v] for k, v in pairs])


def records(rows) -> list[dict]:
    """A DataFrame (or an iterable of mappings, or None) as a list of plain dicts."""
    if rows is None:
        return []
    if hasattr(rows, "to_dict"):
        return [dict(r) for r in rows.to_dict(orient="records")]
    return [dict(r) for r in rows]

"""Step ``end``: export the run to plain files and build the console summary.

Inputs: the output directory, an object holding the run's artifacts (the flow itself; see
:func:`sso.report.export.export_run` for the names read) and the run info for the manifest.
Output: (the written paths: the ``exported`` artifact, the summary table as text).
Side effects: writes ``out_dir`` (layout in :mod:`sso.report.export`).
"""

from __future__ import annotations

from typing import Any

from sso.report.export import export_run
from sso.report.results import format_summary


def end(out_dir: str, data: Any, *, run_info: dict[str, Any]) -> tuple[dict[str, str], str]:
    exported = export_run(out_dir, data, run_info=run_info)
    return exported, format_summary(data.results)

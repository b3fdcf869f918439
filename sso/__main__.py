"""Command line helpers.

    python -m sso export <run-id> DIR [--flow SSOFlow] [--no-cards]

writes a finished (or at least compared) run's results, preference data, adapters, manifest and
card HTML to DIR, in the same layout as the flow's ``end`` step (see :mod:`sso.report.export`). It reads
the run through Metaflow's Client API: run it where the flow ran (Metaflow looks for ``.metaflow``
upward from the current directory) or point ``METAFLOW_DATASTORE_SYSROOT_LOCAL`` at the datastore.
Metaflow is imported only inside the command, so ``import sso`` stays Metaflow-free.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sso.report.export import EXPORT_ARTIFACTS as NEEDED

ARTIFACT_STEPS = ("end", "compare")   # where a run's merged artifacts live, best first


def _artifacts(run) -> tuple[Any, str]:
    """The data of the first finished task among ``ARTIFACT_STEPS`` that has every needed artifact."""
    for name in ARTIFACT_STEPS:
        try:
            task = run[name].task
        except KeyError:
            continue
        if task is not None and task.finished and all(a in task.data for a in NEEDED):
            return task.data, name
    raise LookupError(f"run {run.pathspec} has no finished 'compare' or 'end' step with "
                      f"{', '.join(NEEDED)}; nothing to export (resume it first)")


def export_past_run(run_id: str, out_dir: str, *, flow: str = "SSOFlow", cards: bool = True) -> dict[str, str]:
    """Export run ``run_id`` (``123`` or ``Flow/123``) to ``out_dir``; returns the written paths."""
    from metaflow import Run, namespace

    from sso.report.card_files import write_card_files
    from sso.report.export import export_run

    namespace(None)
    run = Run(run_id if "/" in run_id else f"{flow}/{run_id}")
    data, source_step = _artifacts(run)
    config = data.run_config if "run_config" in data else {}
    written = export_run(out_dir, data, run_info={
        "flow": run.pathspec.split("/")[0], "run_id": run.id, "from_step": source_step,
        "model": config.get("model", {}).get("name", ""), "config": config})
    if cards:
        written.update({f"card:{k}": v for k, v in write_card_files(run, out_dir)[1].items()})
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sso", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a past run's results, preferences, adapters and cards to DIR")
    exp.add_argument("run_id", help="run id (123) or pathspec (SSOFlow/123)")
    exp.add_argument("dir", help="output directory (created)")
    exp.add_argument("--flow", default="SSOFlow", help="flow name when run_id is a bare id")
    exp.add_argument("--no-cards", action="store_true", help="skip the cards' HTML")
    args = parser.parse_args(argv)
    try:
        written = export_past_run(args.run_id, args.dir, flow=args.flow, cards=not args.no_cards)
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback, for a CLI user
        print(f"sso export: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    width = max(len(k) for k in written)
    for key, path in written.items():
        print(f"{key:<{width}}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

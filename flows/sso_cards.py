"""Metaflow side of the cards: turn :mod:`sso.report.cards` component specs into card components.

The content of every card is built by plain functions in ``sso/report/cards.py`` (no metaflow there);
this module only maps specs to ``metaflow.cards`` components, keeps a training card live while
the trainer runs (:class:`LiveTrainingCard`, fed by the trainer's ``on_log`` callback), and reads
a finished run's cards through the Client API (:func:`save_step_cards`).
"""

from __future__ import annotations

import os
import time
from typing import Callable

from metaflow.cards import Markdown, ProgressBar, Table, VegaChart

REFRESH_ENV = "SSO_CARD_REFRESH_S"
DEFAULT_REFRESH_S = 20.0   # each refresh starts a card-render process: keep it rare on small machines

def to_component(spec: dict):
    """One ``sso.report.cards`` spec -> a Metaflow card component."""
    kind = spec["type"]
    if kind == "markdown":
        return Markdown(spec["text"])
    if kind == "table":
        return Table(data=[[_cell(c) for c in row] for row in spec["rows"]] or [[]],
                     headers=spec["headers"])
    if kind == "vega":
        return VegaChart(spec["spec"])
    raise ValueError(f"unknown card component spec type {kind!r} (expected markdown, table or vega)")


def _cell(value):
    if isinstance(value, dict) and "type" in value:
        return to_component(value)       # e.g. a markdown link inside a table
    return value if isinstance(value, (str, int, float)) else str(value)


def show(card, specs: list[dict]) -> None:
    """Append the components of ``specs`` to ``card`` (``current.card[<id>]``)."""
    for spec in specs:
        card.append(to_component(spec))


def refresh_interval() -> float:
    raw = os.environ.get(REFRESH_ENV, "").strip()
    return float(raw) if raw else DEFAULT_REFRESH_S


class LiveTrainingCard:
    """A training card that follows the trainer: pass the instance as ``on_log``.

    It shows a status line, a progress bar and the curves, re-renders the charts from the rows
    logged so far at most every ``interval`` seconds (``SSO_CARD_REFRESH_S``, default 20), and on
    :meth:`finish` replaces itself by the final card (:func:`sso.report.cards.build_training_card`).
    """

    def __init__(self, card, title: str, total_steps: int | None = None, *,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic):
        from sso.report.cards import build_training_charts, build_training_status

        self.card, self.title, self.total_steps = card, title, total_steps
        self.interval = refresh_interval() if interval is None else interval
        self.clock = clock
        self.rows: list[dict] = []
        self.refreshes = 0
        self._last = clock()
        self.status = Markdown(build_training_status(title, [], total_steps))
        self.progress = ProgressBar(max=max(total_steps or 1, 1), label="optimizer steps", value=0)
        self.charts = {s["name"]: VegaChart(s["spec"]) for s in build_training_charts([])}
        for component in (self.status, self.progress, *self.charts.values()):
            card.append(component)
        self._refresh(force=True)

    def __call__(self, row: dict) -> None:
        self.rows.append(dict(row))
        if self.clock() - self._last >= self.interval:
            self.update()

    def update(self) -> None:
        """Push the rows logged so far into the components and refresh the card now."""
        from sso.report.cards import build_training_charts, build_training_status

        self.status.update(build_training_status(self.title, self.rows, self.total_steps))
        self.progress.update(int(self.rows[-1]["step"]) if self.rows else 0)
        for spec in build_training_charts(self.rows):
            self.charts[spec["name"]].update(spec["spec"])
        self._refresh()

    def _refresh(self, force: bool = False) -> None:
        self._last = self.clock()
        self.refreshes += 1
        if force:
            self.card.refresh(force=True)
        else:
            self.card.refresh()

    def finish(self, history, summary: dict) -> None:
        """Replace the live components by the final card."""
        from sso.report.cards import build_training_card

        self.card.clear()
        show(self.card, build_training_card(self.title, history, summary, total_steps=self.total_steps))


def save_step_cards(pathspec: str, out_dir: str) -> tuple[list[dict], dict[str, str]]:
    """The HTML of every card of run ``pathspec`` (``Flow/run``) in ``out_dir/cards/``
    (:func:`sso.report.card_files.write_card_files`)."""
    from metaflow import Run

    from sso.report.card_files import write_card_files

    return write_card_files(Run(pathspec, _namespace_check=False), out_dir)


def live_training_card(card, title: str, n_examples: int, train_cfg, seed: int) -> LiveTrainingCard:
    """A :class:`LiveTrainingCard` that knows how many optimizer steps the trainer will take."""
    from sso.report.cards import planned_steps

    return LiveTrainingCard(card, title, planned_steps(n_examples, train_cfg, seed))


def save_step_cards_safely(pathspec: str, out_dir: str) -> tuple[list[dict], dict[str, str]]:
    """:func:`save_step_cards`, but a run whose cards cannot be read (e.g. remote tasks with local
    metadata) only loses the card copies: it prints why and returns nothing."""
    try:
        return save_step_cards(pathspec, out_dir)
    except Exception as exc:   # noqa: BLE001 - exporting card copies is a convenience
        print(f"cards not exported ({type(exc).__name__}: {exc}); use `card get` instead")
        return [], {}


def finish_run(card, flow, out_dir: str, *, flow_file: str, root: str) -> str:
    """``end``'s cards: copy every step card to ``out_dir/cards/``, fill the summary card; returns
    the console's "what was produced and what to try next" text."""
    from metaflow import current

    from sso.report.cards import build_summary_card, render_next_steps

    cards, card_files = save_step_cards_safely(f"{current.flow_name}/{current.run_id}", out_dir)
    show(card, build_summary_card(
        flow_name=current.flow_name, run_id=current.run_id, config=flow.run_config,
        results=flow.results, sampling_report=flow.sampling_report,
        generator_summary=flow.generator_summary, policy_summaries=flow.policy_summaries,
        step_cards=cards, exported=flow.exported, card_files=card_files))
    return render_next_steps(flow_file=os.path.relpath(os.path.abspath(flow_file)), run_id=current.run_id,
                             out_dir=os.path.abspath(out_dir), exported=flow.exported,
                             configs_dir=os.path.relpath(os.path.join(root, "configs")),
                             n_card_files=len(card_files))

"""A finished run's cards as self-contained HTML files (read through Metaflow's Client API).

Used by the flow's ``end`` step and by ``python -m sso export``; Metaflow is imported inside the
function, so importing this module stays Metaflow-free.
"""

from __future__ import annotations

import os
from typing import Any

# (step, card id, what it shows): the cards of the flow, in DAG order.
STEP_CARDS = (
    ("join_samples", "samples", "counts, principle sources, example triples"),
    ("train_generator", "training", "SSO generator: loss, per-pair margin/accuracy, LR, tokens/s"),
    ("train_policy", "training", "DPO policy per arm: loss, margin/accuracy, LR, tokens/s"),
    ("judge", "judge", "one arm vs base: outcomes, usage, example judgments with raw text"),
    ("compare", "compare", "the arm table and charts, example judgments"),
    ("end", "summary", "this page"),
)


def write_card_files(run: Any, out_dir: str) -> tuple[list[dict], dict[str, str]]:
    """Write every step card of ``run`` (a ``metaflow.Run``) to ``out_dir/cards/<step>-<task>.html``.

    Returns (one dict per card: step, task, id, what, in DAG order; {"step/task": file}). Cards
    not rendered yet (the calling step's own) are listed without a file.
    """
    from metaflow.cards import get_cards

    listed, files = [], {}
    os.makedirs(os.path.join(out_dir, "cards"), exist_ok=True)
    for step_name, card_id, what in STEP_CARDS:
        try:
            step = run[step_name]
        except KeyError:
            continue
        for task in sorted(step, key=lambda t: int(t.id)):
            listed.append({"step": step_name, "task": task.id, "id": card_id, "what": what})
            try:
                cards = list(get_cards(task, id=card_id))
            except Exception:   # noqa: BLE001 - a card that is not there yet is not an error here
                cards = []
            if cards:
                path = os.path.join(out_dir, "cards", f"{step_name}-{task.id}.html")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(cards[0].get())
                files[f"{step_name}/{task.id}"] = os.path.abspath(path)
    return listed, files

"""Training objectives: which sequences form one example and how their log-probs become a loss.

Three objectives share the trainer's loop (:mod:`sso.training.trainer`):

- :data:`DPO_OBJECTIVE`: plain DPO/IPO on (prompt_text, chosen, rejected);
- :data:`SSO_OBJECTIVE`: the SSO generator loss on (x_plus, x_minus, y_plus, y_minus, y_o), four
  sequences per example (see :func:`sso.training.losses.sso_loss`);
- :data:`ONLINE_OBJECTIVE`: the earlier online SSO loss on the policy itself, six sequences per
  example: (x, y+, y-), (x+, y+, y-), (x-, y_o, y+) (see :func:`sso.training.losses.online_sso_loss`).

:func:`validate_table` checks that a table can feed an objective before any model is loaded.

A table may carry a boolean ``<response column>_finished`` column per response column
(:func:`finished_column`: ``y_plus_finished``, ``y_minus_finished``, ``y_o_finished``;
``chosen_finished``, ``rejected_finished``): False marks a response cut at ``max_new_tokens``,
which is scored without the end-of-turn token. A missing column means every response finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from sso.config import TrainConfig
from sso.training.losses import PairLogps, base_pair_loss, online_sso_loss, pair_metrics, sso_loss

ObjectiveLoss = Callable[[Tensor, Tensor, Tensor, TrainConfig], tuple[Tensor, dict[str, Tensor]]]
Role = tuple[str, str, str]   # (name, prompt column, response column)


@dataclass(frozen=True)
class Objective:
    """What one training example is made of and how its log-probs become a loss.

    ``columns``: required columns, each a non-empty string in every row.
    ``roles``: (name, prompt column, response column) of each sequence of an example, in the order
    the loss reads them. ``report_roles``: sequences scored once under the reference for the
    on-policyness report only. ``loss(policy [k, B], reference [k, B], n_tokens [k, B], cfg)``
    returns per-example losses ``[B]`` and detached per-example metrics.
    """

    name: str
    columns: tuple[str, ...]
    roles: tuple[Role, ...]
    loss: ObjectiveLoss
    report_roles: tuple[Role, ...] = ()
    optional_report_roles: tuple[Role, ...] = ()


def _pair(pol: Tensor, ref: Tensor, ntok: Tensor, i: int) -> PairLogps:
    """Rows ``i`` (chosen) and ``i + 1`` (rejected) of ``[k, B]`` tensors as one pair."""
    return PairLogps(pol[i], pol[i + 1], ref[i], ref[i + 1], ntok[i], ntok[i + 1])


def _dpo_objective_loss(pol: Tensor, ref: Tensor, ntok: Tensor, cfg: TrainConfig):
    losses, rc, rr = base_pair_loss(_pair(pol, ref, ntok, 0), base=cfg.loss, beta=cfg.beta,
                                    label_smoothing=cfg.label_smoothing)
    return losses, pair_metrics("", rc, rr)


def _sso_objective_loss(pol: Tensor, ref: Tensor, ntok: Tensor, cfg: TrainConfig):
    return sso_loss(_pair(pol, ref, ntok, 0), _pair(pol, ref, ntok, 2), base=cfg.loss, beta=cfg.beta,
                    gamma=cfg.gamma, lam=cfg.lam, label_smoothing=cfg.label_smoothing)


def _online_objective_loss(pol: Tensor, ref: Tensor, ntok: Tensor, cfg: TrainConfig):
    from sso.config import OnlineConfig

    o = getattr(cfg, "online", None) or OnlineConfig()
    return online_sso_loss(_pair(pol, ref, ntok, 0), _pair(pol, ref, ntok, 2), _pair(pol, ref, ntok, 4),
                           base=o.loss, beta=cfg.beta, theta=o.theta, alpha=o.alpha, use_weight=o.use_weight,
                           detach_weight=o.detach_weight, weight_on_g_only=o.weight_on_g_only,
                           label_smoothing=cfg.label_smoothing)


DPO_OBJECTIVE = Objective(
    name="dpo",
    columns=("prompt_text", "chosen", "rejected"),
    roles=(("chosen", "prompt_text", "chosen"), ("rejected", "prompt_text", "rejected")),
    loss=_dpo_objective_loss,
)

SSO_OBJECTIVE = Objective(
    name="sso",
    columns=("x_plus", "x_minus", "y_plus", "y_minus", "y_o"),
    roles=(("plus_chosen", "x_plus", "y_plus"), ("plus_rejected", "x_plus", "y_minus"),
           ("minus_chosen", "x_minus", "y_o"), ("minus_rejected", "x_minus", "y_plus")),
    loss=_sso_objective_loss,
    report_roles=(("y_minus_x_minus", "x_minus", "y_minus"),),
    optional_report_roles=(("y_plus_plain", "prompt_text", "y_plus"),
                           ("y_minus_plain", "prompt_text", "y_minus")),
)


ONLINE_OBJECTIVE = Objective(
    name="online_sso",
    columns=("prompt_text", "x_plus", "x_minus", "y_plus", "y_minus", "y_o"),
    roles=(("main_chosen", "prompt_text", "y_plus"), ("main_rejected", "prompt_text", "y_minus"),
           ("plus_chosen", "x_plus", "y_plus"), ("plus_rejected", "x_plus", "y_minus"),
           ("minus_chosen", "x_minus", "y_o"), ("minus_rejected", "x_minus", "y_plus")),
    loss=_online_objective_loss,
)


def finished_column(response_column: str) -> str:
    """Name of the optional boolean column saying whether ``response_column``'s responses finished."""
    return f"{response_column}_finished"


def response_columns(roles: tuple[Role, ...]) -> tuple[str, ...]:
    """The distinct response columns of ``roles``, in first-use order."""
    return tuple(dict.fromkeys(r for _name, _p, r in roles))


def finished_flags(table, response_column: str) -> list[bool]:
    """Per-row finished flags of ``response_column`` (all True when its ``_finished`` column is absent)."""
    col = finished_column(response_column)
    return [bool(v) for v in table[col].tolist()] if col in table.columns else [True] * len(table)


def _validate_finished(table, objective: Objective, name: str) -> None:
    """Every present ``<response>_finished`` column holds only booleans."""
    import numpy as np

    for resp in response_columns(objective.roles):
        col = finished_column(resp)
        if col not in table.columns:
            continue
        for pos, value in enumerate(table[col].tolist()):
            if not isinstance(value, (bool, np.bool_)):
                qid = f" (query_id {table['query_id'].iloc[pos]})" if "query_id" in table.columns else ""
                raise ValueError(f"{name} column {col!r} row {pos}{qid} must be True or False "
                                 f"(did the response finish?), got {value!r}")


def validate_table(table, objective: Objective, name: str) -> None:
    """Raise ValueError naming the column/row if ``table`` cannot feed ``objective``."""
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in objective.columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {', '.join(missing)}; "
                         f"expected {', '.join(objective.columns)}, got {', '.join(map(str, table.columns))}")
    if len(table) == 0:
        raise ValueError(f"{name} is empty: no rows to train on")
    for col in objective.columns:
        for pos, value in enumerate(table[col].tolist()):
            if not isinstance(value, str) or not value.strip():
                qid = f" (query_id {table['query_id'].iloc[pos]})" if "query_id" in table.columns else ""
                raise ValueError(f"{name} column {col!r} row {pos}{qid} is empty or not a string: {value!r}")
    _validate_finished(table, objective, name)


def report_roles(objective: Objective, table) -> tuple[Role, ...]:
    """The objective's report-only roles, plus its optional ones whose prompt column ``table`` has."""
    extra = tuple(r for r in objective.optional_report_roles if r[1] in table.columns)
    return objective.report_roles + extra

"""Preference losses as pure functions of log-prob tensors.

Every function takes per-sequence log-probabilities (already reduced over the response tokens) and
returns per-example losses plus *detached* rewards/metrics; the trainer reduces, logs and steps.
No config objects, no model, no trainer state.

Notation as in the SSO paper (Xiang et al. 2024, arXiv 2410.17131): ``log pi(y|x)`` is the SUM of
response-token log-probs, ``a(y|x) = log pi(y|x) / |y|`` the MEAN per response token, ``pi_ref``
the frozen reference.

- :func:`dpo_loss`  DPO, Rafailov et al. 2023, Eq. 7 (sigmoid loss on summed log-ratios), with
  "conservative DPO" label smoothing (a label flipped with probability ``eps``; Mitchell 2023,
  "A note on DPO with noisy preferences").
- :func:`ipo_loss`  IPO, Azar et al. 2023, Eq. 17, on MEAN log-ratios as in the SSO paper.
- :func:`simpo_loss`  SimPO, Meng et al. 2024, reference-free, on MEAN log-probs with a margin.
- :func:`sso_loss`  the published SSO generator loss, Xiang et al. 2024 (arXiv 2410.17131):
  ``L+ + lambda * L-`` with ``L+ = L_base(x+, y+, y-) + gamma * L_SFT(x+, y+)`` and
  ``L- = L_base(x-, y_o, y+) + gamma * L_SFT(x-, y_o)``.
- :func:`online_sso_loss`  the earlier online variant (OpenReview 1HQZ4QFWi8):
  ``W * (L_main + theta * G)`` with ``W = sigmoid(-(alpha a(y+|x) + (1-alpha) a(y-|x)))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class PairLogps:
    """Log-probs of one (prompt, chosen, rejected) pair per example, policy and reference.

    All fields are 1-D tensors of shape ``[B]``. ``*_logps`` are SUMMED response log-probs
    (end-of-turn token included, prompt masked); ``*_tokens`` the number of response tokens, so
    that ``a(y|x) = logps / tokens``. Reference fields carry no gradient.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    reference_chosen: Tensor
    reference_rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor

    def mean(self) -> "PairLogps":
        """The same pair with every log-prob divided by its token count (``a(y|x)``)."""
        nc = self.chosen_tokens.clamp(min=1).to(self.policy_chosen.dtype)
        nr = self.rejected_tokens.clamp(min=1).to(self.policy_rejected.dtype)
        return PairLogps(self.policy_chosen / nc, self.policy_rejected / nr,
                         self.reference_chosen / nc, self.reference_rejected / nr,
                         self.chosen_tokens, self.rejected_tokens)


LossOut = tuple[Tensor, Tensor, Tensor]   # (per-example losses [B], chosen rewards [B], rejected rewards [B])


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
             *, beta: float, label_smoothing: float = 0.0) -> LossOut:
    """DPO loss (Rafailov et al. 2023, Eq. 7) on SUMMED response log-probs, each of shape ``[B]``.

    ``loss = -(1 - eps) log sigmoid(beta * h) - eps log sigmoid(-beta * h)`` with
    ``h = (log pi(yw|x) - log pi_ref(yw|x)) - (log pi(yl|x) - log pi_ref(yl|x))`` and ``eps`` the
    label smoothing (conservative DPO; ``eps = 0`` is plain DPO).

    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])``; rewards are
    ``beta * (log pi - log pi_ref)``, detached.
    """
    chosen_logratios = policy_chosen_logps - reference_chosen_logps        # [B]
    rejected_logratios = policy_rejected_logps - reference_rejected_logps  # [B]
    logits = beta * (chosen_logratios - rejected_logratios)               # [B]
    losses = (-(1.0 - label_smoothing) * F.logsigmoid(logits)
              - label_smoothing * F.logsigmoid(-logits))
    return losses, (beta * chosen_logratios).detach(), (beta * rejected_logratios).detach()


def ipo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
             *, beta: float) -> LossOut:
    """IPO loss (Azar et al. 2023, Eq. 17) on MEAN per-token log-probs ``a(y|x)``, shape ``[B]``.

    ``loss = (h - 1 / (2 beta))^2`` with ``h = (a(yw|x) - a_ref(yw|x)) - (a(yl|x) - a_ref(yl|x))``.
    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])``; rewards are
    ``beta * (a - a_ref)``, detached.
    """
    chosen_logratios = policy_chosen_logps - reference_chosen_logps        # [B]
    rejected_logratios = policy_rejected_logps - reference_rejected_logps  # [B]
    losses = (chosen_logratios - rejected_logratios - 1.0 / (2.0 * beta)) ** 2
    return losses, (beta * chosen_logratios).detach(), (beta * rejected_logratios).detach()


SIMPO_MARGIN_RATIO = 0.5   # gamma / beta, the SimPO paper's recommended ratio


def simpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, *, beta: float,
               margin_ratio: float = SIMPO_MARGIN_RATIO) -> LossOut:
    """SimPO loss (Meng et al. 2024, Eq. 6): reference-free, on MEAN per-token log-probs ``a(y|x)``,
    shape ``[B]``.

    ``loss = -log sigmoid(beta * (a(yw|x) - a(yl|x)) - gamma)`` with the target margin
    ``gamma = margin_ratio * beta``. Returns ``(losses [B], chosen_rewards [B], rejected_rewards
    [B])``; rewards are ``beta * a``, detached (no reference model enters the loss).
    """
    logits = beta * (policy_chosen_logps - policy_rejected_logps) - margin_ratio * beta   # [B]
    return (-F.logsigmoid(logits), (beta * policy_chosen_logps).detach(),
            (beta * policy_rejected_logps).detach())


def sft_loss(policy_logps: Tensor, n_tokens: Tensor) -> Tensor:
    """``L_SFT(x, y) = -a(y|x)``: mean negative log-likelihood per response token, shape ``[B]``."""
    return -policy_logps / n_tokens.clamp(min=1).to(policy_logps.dtype)


def _dpo_pair(pair: PairLogps, beta: float, label_smoothing: float) -> LossOut:
    return dpo_loss(pair.policy_chosen, pair.policy_rejected, pair.reference_chosen,
                    pair.reference_rejected, beta=beta, label_smoothing=label_smoothing)


def _ipo_pair(pair: PairLogps, beta: float, label_smoothing: float) -> LossOut:
    m = pair.mean()
    return ipo_loss(m.policy_chosen, m.policy_rejected, m.reference_chosen, m.reference_rejected,
                    beta=beta)


def _simpo_pair(pair: PairLogps, beta: float, label_smoothing: float) -> LossOut:
    m = pair.mean()
    return simpo_loss(m.policy_chosen, m.policy_rejected, beta=beta)


#: Base preference losses by name: ``fn(pair, beta, label_smoothing) -> (losses, rc, rr)``.
BASE_LOSSES: dict[str, Callable[[PairLogps, float, float], LossOut]] = {
    "dpo": _dpo_pair,
    "ipo": _ipo_pair,
    "simpo": _simpo_pair,
}


def base_pair_loss(pair: PairLogps, *, base: str, beta: float, label_smoothing: float = 0.0) -> LossOut:
    """The named base loss (``dpo`` on summed, ``ipo`` on mean log-probs) of one pair."""
    try:
        fn = BASE_LOSSES[base]
    except KeyError:
        raise ValueError(f"unknown base loss {base!r}; expected one of: {', '.join(BASE_LOSSES)}") from None
    return fn(pair, beta, label_smoothing)


def pair_metrics(prefix: str, chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """Per-example reward metrics of one pair (detached, shape ``[B]``), keys prefixed."""
    return {
        f"{prefix}rewards_chosen": chosen_rewards.detach(),
        f"{prefix}rewards_rejected": rejected_rewards.detach(),
        f"{prefix}margin": (chosen_rewards - rejected_rewards).detach(),
        f"{prefix}accuracy": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).detach(),
    }


def sso_loss(plus: PairLogps, minus: PairLogps, *, base: str = "dpo", beta: float, gamma: float,
             lam: float, label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Published SSO generator loss (Xiang et al. 2024, arXiv 2410.17131, Sec. 3):

    ``L = L+ + lam * L-`` with
    ``L+ = L_base(x+, y+, y-) + gamma * L_SFT(x+, y+)``  (``plus``: chosen y+, rejected y- under x+)
    ``L- = L_base(x-, y_o, y+) + gamma * L_SFT(x-, y_o)`` (``minus``: chosen y_o, rejected y+ under x-)

    ``L_SFT`` is the mean NLL over response tokens. Returns ``(losses [B], metrics)`` where metrics
    maps ``plus_*`` / ``minus_*`` keys (rewards_chosen, rewards_rejected, margin, accuracy, sft,
    base) to detached ``[B]`` tensors.
    """
    plus_base, plus_rc, plus_rr = base_pair_loss(plus, base=base, beta=beta, label_smoothing=label_smoothing)
    minus_base, minus_rc, minus_rr = base_pair_loss(minus, base=base, beta=beta, label_smoothing=label_smoothing)
    plus_sft = sft_loss(plus.policy_chosen, plus.chosen_tokens)       # [B]
    minus_sft = sft_loss(minus.policy_chosen, minus.chosen_tokens)    # [B]
    loss_plus = plus_base + gamma * plus_sft
    loss_minus = minus_base + gamma * minus_sft
    metrics = {
        **pair_metrics("plus_", plus_rc, plus_rr),
        **pair_metrics("minus_", minus_rc, minus_rr),
        "plus_sft": plus_sft.detach(), "minus_sft": minus_sft.detach(),
        "plus_base": plus_base.detach(), "minus_base": minus_base.detach(),
    }
    return loss_plus + lam * loss_minus, metrics


def online_sso_loss(main: PairLogps, plus: PairLogps, minus: PairLogps, *, base: str = "ipo",
                    beta: float, theta: float = 0.1, alpha: float = 0.66, use_weight: bool = True,
                    detach_weight: bool = False, weight_on_g_only: bool = False,
                    label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Earlier, online SSO variant (OpenReview 1HQZ4QFWi8):

    ``L_main = L_base(x, y+, y-)`` (``main``: plain prompt), ``G = L_base(x+, y+, y-) +
    L_base(x-, y_o, y+)`` (``plus`` / ``minus`` as in :func:`sso_loss`),
    ``W = sigmoid(-(alpha * a(y+|x) + (1 - alpha) * a(y-|x)))`` from the POLICY's mean log-probs of
    the main pair, and ``L = W * (L_main + theta * G)``.

    Options: ``use_weight=False`` sets ``W = 1``; ``detach_weight`` stops gradients through W;
    ``weight_on_g_only`` gives ``L = L_main + W * theta * G`` (only G weighted).
    Returns ``(losses [B], metrics)`` with ``main_*``, ``plus_*``, ``minus_*`` reward metrics and
    ``weight``, all detached ``[B]``.
    """
    main_l, main_rc, main_rr = base_pair_loss(main, base=base, beta=beta, label_smoothing=label_smoothing)
    plus_l, plus_rc, plus_rr = base_pair_loss(plus, base=base, beta=beta, label_smoothing=label_smoothing)
    minus_l, minus_rc, minus_rr = base_pair_loss(minus, base=base, beta=beta, label_smoothing=label_smoothing)
    g = plus_l + minus_l                                                   # [B]
    m = main.mean()
    weight = torch.sigmoid(-(alpha * m.policy_chosen + (1.0 - alpha) * m.policy_rejected))  # [B]
    if not use_weight:
        weight = torch.ones_like(weight)
    elif detach_weight:
        weight = weight.detach()
    if weight_on_g_only:
        losses = main_l + weight * theta * g
    else:
        losses = weight * (main_l + theta * g)
    metrics = {
        **pair_metrics("main_", main_rc, main_rr),
        **pair_metrics("plus_", plus_rc, plus_rr),
        **pair_metrics("minus_", minus_rc, minus_rr),
        "weight": weight.detach(),
    }
    return losses, metrics

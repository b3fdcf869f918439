"""Losses against hand-computed values, reductions between them, and gradient directions."""

from __future__ import annotations

import math

import pytest
import torch

from sso.training.losses import (
    BASE_LOSSES,
    PairLogps,
    base_pair_loss,
    dpo_loss,
    ipo_loss,
    online_sso_loss,
    sft_loss,
    sso_loss,
)


def t(*values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def log1pexp(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), written out by hand."""
    return math.log(1.0 + math.exp(x))


def pair(pc, pr, rc, rr, nc, nr, grad=False) -> PairLogps:
    return PairLogps(t(*pc, grad=grad), t(*pr, grad=grad), t(*rc), t(*rr), t(*nc), t(*nr))


# ---------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------


def test_dpo_hand_values():
    # example 0: chosen ratio +0.5, rejected ratio -0.5 -> h = 1, beta*h = 0.5
    # example 1: chosen ratio -1, rejected ratio +1   -> h = -2, beta*h = -1
    losses, rc, rr = dpo_loss(t(-1.0, -4.0), t(-2.0, -2.0), t(-1.5, -3.0), t(-1.5, -3.0), beta=0.5)
    assert losses.tolist() == pytest.approx([log1pexp(-0.5), log1pexp(1.0)], abs=1e-12)
    assert rc.tolist() == pytest.approx([0.25, -0.5])
    assert rr.tolist() == pytest.approx([-0.25, 0.5])
    assert not rc.requires_grad and not rr.requires_grad


def test_dpo_label_smoothing_hand_value():
    losses, _, _ = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.5, label_smoothing=0.2)
    expected = 0.8 * log1pexp(-0.5) + 0.2 * log1pexp(0.5)
    assert losses.item() == pytest.approx(expected, abs=1e-12)


def test_dpo_equal_policy_and_reference_is_ln2():
    x = t(-3.0, -7.5, -0.1)
    losses, rc, rr = dpo_loss(x, x - 1, x, x - 1, beta=0.1)
    assert losses.tolist() == pytest.approx([math.log(2)] * 3, abs=1e-12)
    assert rc.abs().max() == 0 and rr.abs().max() == 0


def test_ipo_hand_values():
    # mean log-ratios: chosen +0.5, rejected -0.5 -> h = 1
    losses, rc, rr = ipo_loss(t(-1.0, -1.0), t(-2.0, -2.0), t(-1.5, -1.5), t(-1.5, -1.5), beta=0.5)
    assert losses.tolist() == pytest.approx([0.0, 0.0])          # (1 - 1/(2*0.5))^2
    losses, _, _ = ipo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.25)
    assert losses.item() == pytest.approx((1.0 - 2.0) ** 2)      # (1 - 1/(2*0.25))^2
    assert rc.tolist() == pytest.approx([0.25, 0.25]) and rr.tolist() == pytest.approx([-0.25, -0.25])


def test_ipo_base_uses_mean_logps():
    # summed log-ratios +2 (over 4 tokens) and -1 (over 2 tokens): means +0.5 and -0.5 -> h = 1
    p = pair([-4.0], [-3.0], [-6.0], [-2.0], [4], [2])
    losses, _, _ = base_pair_loss(p, base="ipo", beta=1.0)
    assert losses.item() == pytest.approx((1.0 - 0.5) ** 2)
    losses, _, _ = base_pair_loss(p, base="dpo", beta=1.0)      # DPO uses the sums: h = 3
    assert losses.item() == pytest.approx(log1pexp(-3.0))


def test_sft_is_mean_nll():
    assert sft_loss(t(-6.0, -1.0), t(3, 1)).tolist() == pytest.approx([2.0, 1.0])


def test_unknown_base_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown base loss 'kto'"):
        base_pair_loss(pair([0.0], [0.0], [0.0], [0.0], [1], [1]), base="kto", beta=0.1)
    assert set(BASE_LOSSES) == {"dpo", "ipo", "simpo"}


def test_sso_hand_value():
    plus = pair([-2.0], [-3.0], [-2.5], [-2.5], [4], [3])    # h+ = 0.5 - (-0.5) = 1
    minus = pair([-1.0], [-5.0], [-2.0], [-4.0], [2], [5])   # h- = 1 - (-1) = 2
    beta, gamma, lam = 0.5, 0.1, 0.7
    loss, m = sso_loss(plus, minus, base="dpo", beta=beta, gamma=gamma, lam=lam)
    l_plus = log1pexp(-beta * 1.0) + gamma * (2.0 / 4)
    l_minus = log1pexp(-beta * 2.0) + gamma * (1.0 / 2)
    assert loss.item() == pytest.approx(l_plus + lam * l_minus, abs=1e-12)
    assert m["plus_margin"].item() == pytest.approx(0.5) and m["minus_margin"].item() == pytest.approx(1.0)
    assert m["plus_accuracy"].item() == 1.0 and m["minus_accuracy"].item() == 1.0
    assert m["plus_sft"].item() == pytest.approx(0.5) and m["minus_sft"].item() == pytest.approx(0.5)
    assert all(not v.requires_grad for v in m.values())


def test_sso_lam0_is_l_plus_and_gamma0_is_dpo_on_plus_pair():
    gen = torch.Generator().manual_seed(0)
    r = lambda: torch.randn(5, generator=gen, dtype=torch.float64) - 5   # noqa: E731
    n = lambda: torch.randint(1, 9, (5,), generator=gen).double()       # noqa: E731
    plus = PairLogps(r(), r(), r(), r(), n(), n())
    minus = PairLogps(r(), r(), r(), r(), n(), n())
    for base in ("dpo", "ipo"):
        loss, _ = sso_loss(plus, minus, base=base, beta=0.2, gamma=0.3, lam=0.0)
        l_plus = base_pair_loss(plus, base=base, beta=0.2)[0] + 0.3 * sft_loss(plus.policy_chosen, plus.chosen_tokens)
        torch.testing.assert_close(loss, l_plus)
    loss, _ = sso_loss(plus, minus, base="dpo", beta=0.2, gamma=0.0, lam=0.0)
    dpo, _, _ = dpo_loss(plus.policy_chosen, plus.policy_rejected, plus.reference_chosen,
                         plus.reference_rejected, beta=0.2)
    torch.testing.assert_close(loss, dpo)
    # and lam scales exactly the x- term
    l1, _ = sso_loss(plus, minus, base="dpo", beta=0.2, gamma=0.3, lam=1.0)
    l2, _ = sso_loss(plus, minus, base="dpo", beta=0.2, gamma=0.3, lam=2.0)
    torch.testing.assert_close(l2 - l1, l1 - loss - 0.3 * sft_loss(plus.policy_chosen, plus.chosen_tokens))


def test_online_without_weight_and_theta0_is_base_loss():
    main = pair([-2.0, -9.0], [-3.0, -4.0], [-2.5, -8.0], [-2.5, -5.0], [4, 6], [3, 2])
    plus = pair([-1.0, -1.0], [-1.0, -1.0], [-2.0, -2.0], [-2.0, -2.0], [1, 1], [1, 1])
    for base in ("dpo", "ipo"):
        loss, _ = online_sso_loss(main, plus, plus, base=base, beta=0.2, theta=0.0, use_weight=False)
        torch.testing.assert_close(loss, base_pair_loss(main, base=base, beta=0.2)[0])


def test_online_hand_value_and_weight_placement():
    main = pair([-2.0], [-3.0], [-2.5], [-2.5], [4], [3])     # a(y+|x) = -0.5, a(y-|x) = -1
    plus = pair([-2.0], [-3.0], [-2.5], [-2.5], [4], [3])
    minus = pair([-1.0], [-5.0], [-2.0], [-4.0], [2], [5])
    beta, theta, alpha = 0.5, 0.1, 0.66
    w = 1.0 / (1.0 + math.exp(alpha * -0.5 + (1 - alpha) * -1.0))  # sigmoid(-(alpha a+ + (1-alpha) a-))
    l_main, g = log1pexp(-0.5), log1pexp(-0.5) + log1pexp(-1.0)
    loss, m = online_sso_loss(main, plus, minus, base="dpo", beta=beta, theta=theta, alpha=alpha)
    assert loss.item() == pytest.approx(w * (l_main + theta * g), abs=1e-12)
    assert m["weight"].item() == pytest.approx(w)
    loss, _ = online_sso_loss(main, plus, minus, base="dpo", beta=beta, theta=theta, alpha=alpha,
                              weight_on_g_only=True)
    assert loss.item() == pytest.approx(l_main + w * theta * g, abs=1e-12)


def test_online_detach_weight_stops_its_gradient():
    def grad_of_main_chosen(detach: bool) -> float:
        main = pair([-2.0], [-3.0], [-2.5], [-2.5], [4], [3], grad=True)
        plus = pair([-2.0], [-3.0], [-2.5], [-2.5], [4], [3])
        loss, m = online_sso_loss(main, plus, plus, base="dpo", beta=0.5, theta=0.0, detach_weight=detach)
        loss.sum().backward()
        return main.policy_chosen.grad.item(), m["weight"].item()

    g_detached, w = grad_of_main_chosen(True)
    g_full, _ = grad_of_main_chosen(False)
    # detached: only W * dL_main/dc = W * (-beta * sigmoid(-beta h)) with h = 1
    assert g_detached == pytest.approx(w * -0.5 / (1 + math.exp(0.5)), abs=1e-12)
    assert g_full < g_detached   # W itself falls as a(y+|x) rises: an extra push in the same direction


# ---------------------------------------------------------------------------------------------
# Gradient direction: descending the loss raises chosen and lowers rejected log-probs
# ---------------------------------------------------------------------------------------------


def _check_directions(chosen: list[torch.Tensor], rejected: list[torch.Tensor]) -> None:
    for c in chosen:
        assert (c.grad < 0).all(), c.grad
    for r in rejected:
        assert (r.grad > 0).all(), r.grad


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dpo_gradient_direction(label_smoothing):
    pc, pr = t(-3.0, -5.0, -1.0, grad=True), t(-4.0, -2.0, -1.0, grad=True)
    losses, _, _ = dpo_loss(pc, pr, t(-3.0, -4.0, -2.0), t(-3.5, -3.0, -0.5), beta=0.1,
                            label_smoothing=label_smoothing)
    losses.sum().backward()
    _check_directions([pc], [pr])


def test_ipo_gradient_direction_below_target_margin():
    pc, pr = t(-1.0, -2.0, grad=True), t(-1.0, -0.5, grad=True)
    losses, _, _ = ipo_loss(pc, pr, t(-1.0, -1.5), t(-1.0, -1.0), beta=0.1)   # h < 1/(2 beta) = 5
    losses.sum().backward()
    _check_directions([pc], [pr])


@pytest.mark.parametrize("base", ["dpo", "ipo"])
def test_sso_gradient_direction(base):
    plus = pair([-3.0, -6.0], [-4.0, -2.0], [-3.0, -5.0], [-3.5, -2.5], [3, 4], [4, 2], grad=True)
    minus = pair([-2.0, -7.0], [-5.0, -1.0], [-2.5, -6.0], [-4.0, -1.5], [2, 5], [3, 3], grad=True)
    loss, _ = sso_loss(plus, minus, base=base, beta=0.1, gamma=0.1, lam=1.0)
    loss.sum().backward()
    # x+: y+ up, y- down; x-: y_o up, y+ down
    _check_directions([plus.policy_chosen, minus.policy_chosen], [plus.policy_rejected, minus.policy_rejected])


@pytest.mark.parametrize("base", ["dpo", "ipo"])
def test_online_sso_gradient_direction(base):
    main = pair([-3.0, -6.0], [-4.0, -2.0], [-3.0, -5.0], [-3.5, -2.5], [3, 4], [4, 2], grad=True)
    plus = pair([-3.0, -6.0], [-4.0, -2.0], [-3.0, -5.0], [-3.5, -2.5], [3, 4], [4, 2], grad=True)
    minus = pair([-2.0, -7.0], [-5.0, -1.0], [-2.5, -6.0], [-4.0, -1.5], [2, 5], [3, 3], grad=True)
    loss, _ = online_sso_loss(main, plus, minus, base=base, beta=0.1, theta=0.1, detach_weight=True)
    loss.sum().backward()
    _check_directions([main.policy_chosen, plus.policy_chosen, minus.policy_chosen],
                      [main.policy_rejected, plus.policy_rejected, minus.policy_rejected])


def test_simpo_hand_value_is_reference_free_and_length_normalised():
    import math

    import torch

    from sso.training.losses import simpo_loss

    # mean log-probs a(yw) = -1.0, a(yl) = -1.5; beta 2, margin 0.5 * beta = 1.0
    losses, rc, rr = simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.5]), beta=2.0)
    assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-(2.0 * 0.5 - 1.0)))))
    assert rc.item() == pytest.approx(-2.0) and rr.item() == pytest.approx(-3.0)
    # through the registry the pair is length-normalised and the reference is ignored
    p = pair([-10.0], [-30.0], [5.0], [-99.0], [10], [20])
    via, _, _ = base_pair_loss(p, base="simpo", beta=2.0)
    assert via.item() == pytest.approx(losses.item())

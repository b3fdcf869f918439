"""The arm and generator-variant plan of a run (sso.arms), the online objective, and the ablation
losses computed by hand on one batch."""

import math

import pytest
import torch

from sso.arms import ARMS, arm_policy_config, arm_source, plan_run, sweep_name
from sso.config import ConfigError, SSOConfig, validate
from sso.training.losses import PairLogps, base_pair_loss, online_sso_loss, sft_loss, sso_loss
from sso.training.objectives import ONLINE_OBJECTIVE, SSO_OBJECTIVE


def cfg(**tables):
    return SSOConfig.from_dict(tables)


def test_offline_plan_trains_one_generator_per_variant_the_arms_need():
    plan = plan_run(cfg(policy={"arms": ["sso", "sso_ipo", "pbaa", "sso_no_sft"]}))
    assert list(plan.generators) == ["sso", "no_sft"]           # sso_ipo shares the sso generator
    assert plan.generators["no_sft"] == {"gamma": 0.0}
    assert list(plan.arms) == ["sso", "sso_ipo", "pbaa", "sso_no_sft"]


def test_sweep_points_add_a_generator_and_an_arm_each_in_grid_order():
    plan = plan_run(cfg(generator={"lam": 0.5, "sweep": {"gamma": [0.01, 1.0], "lam": [0.0, 2.0]}},
                        policy={"arms": ["pbaa"]}))
    names = [sweep_name(g, l) for g in (0.01, 1.0) for l in (0.0, 2.0)]
    assert names[0] == "sweep_g0.01_l0" and list(plan.generators) == names
    assert plan.generators["sweep_g1_l2"] == {"gamma": 1.0, "lam": 2.0}
    assert list(plan.arms) == ["pbaa", *names] and plan.arms["sweep_g1_l2"].generator == "sweep_g1_l2"
    only_gamma = plan_run(cfg(generator={"lam": 0.5, "sweep": {"gamma": [0.1]}}, policy={"arms": ["pbaa"]}))
    assert only_gamma.generators == {"sweep_g0.1_l0.5": {"gamma": 0.1, "lam": 0.5}}   # lam: the base value


def test_online_mode_adds_one_arm_per_iteration_and_refuses_generator_arms():
    assert list(plan_run(cfg(run={"mode": "iterative", "iterations": 2}, policy={"arms": ["pbaa"]})).arms) == [
        "pbaa", "online_it1", "online_it2"]
    plan = plan_run(cfg(run={"mode": "online", "iterations": 3}, policy={"arms": ["pbaa", "online_sso"]}))
    assert plan.generators == {}
    assert list(plan.arms) == ["pbaa", "online_sso", "online_it1", "online_it2", "online_it3"]
    assert plan.arms["online_it2"].iteration == 2 and arm_source(plan.arms["online_it2"]).startswith("online iteration 2")
    with pytest.raises(ConfigError, match=r"arms sso need one.*pbaa, online_sso"):
        validate(cfg(run={"mode": "online"}, policy={"arms": ["sso", "pbaa"]}))
    with pytest.raises(ConfigError, match=r"\[generator.sweep\]"):
        validate(cfg(run={"mode": "online"}, generator={"sweep": {"gamma": [0.1]}}, policy={"arms": ["pbaa"]}))
    with pytest.raises(ConfigError, match=r"nodes = 2 with \[run\] mode = 'online': multi-node training of the "
                                          r"online loop is not built"):
        validate(cfg(run={"mode": "online"}, policy={"arms": ["pbaa"]}, resources={"train": {"nodes": 2}}))
    assert validate(cfg(resources={"train": {"nodes": 2}})).resources.train.nodes == 2   # offline: SSOMultiNodeFlow
    with pytest.raises(ConfigError, match=r"\[run\] mode must be one of"):
        cfg(run={"mode": "batch"})
    with pytest.raises(ConfigError, match=r"\[generator.sweep\] gamma must be a list of at most 10 distinct"):
        cfg(generator={"sweep": {"gamma": [0.1, 0.1]}})


def test_online_arms_take_the_online_base_loss():
    c = cfg(policy={"loss": "dpo", "online": {"loss": "dpo"}})
    assert arm_policy_config(c.policy, "online_sso").loss == "dpo"
    assert arm_policy_config(cfg().policy, "online_sso").loss == "ipo"
    assert arm_policy_config(cfg().policy, "sso_simpo").loss == "simpo" and ARMS["sso"].loss is None


def _batch(k, b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    pol = -torch.rand(k, b, generator=g) * 20
    ref = pol + torch.randn(k, b, generator=g)
    ntok = torch.randint(3, 12, (k, b), generator=g)
    return pol, ref, ntok


@pytest.mark.parametrize("gamma,lam", [(0.3, 0.0), (0.0, 0.7)])
def test_ablation_losses_are_the_terms_they_keep(gamma, lam):
    pol, ref, ntok = _batch(4)
    train = cfg(generator={"gamma": gamma, "lam": lam, "beta": 0.2}).generator
    losses, metrics = SSO_OBJECTIVE.loss(pol, ref, ntok, train)
    plus = PairLogps(pol[0], pol[1], ref[0], ref[1], ntok[0], ntok[1])
    minus = PairLogps(pol[2], pol[3], ref[2], ref[3], ntok[2], ntok[3])
    h_plus = 0.2 * ((pol[0] - ref[0]) - (pol[1] - ref[1]))       # DPO by hand
    h_minus = 0.2 * ((pol[2] - ref[2]) - (pol[3] - ref[3]))
    by_hand = (-torch.nn.functional.logsigmoid(h_plus) + gamma * (-pol[0] / ntok[0])
               + lam * (-torch.nn.functional.logsigmoid(h_minus) + gamma * (-pol[2] / ntok[2])))
    torch.testing.assert_close(losses, by_hand, rtol=1e-6, atol=1e-6)
    if lam == 0:
        torch.testing.assert_close(losses, base_pair_loss(plus, base="dpo", beta=0.2)[0]
                                   + gamma * sft_loss(plus.policy_chosen, plus.chosen_tokens))
    else:
        torch.testing.assert_close(losses, sso_loss(plus, minus, beta=0.2, gamma=0.0, lam=lam)[0])
        assert torch.all(metrics["minus_base"] > 0)


def test_online_objective_is_the_online_loss_of_its_six_sequences():
    pol, ref, ntok = _batch(6, seed=1)
    policy = cfg(policy={"beta": 0.1, "online": {"theta": 0.5, "alpha": 0.3, "detach_weight": True}}).policy
    losses, metrics = ONLINE_OBJECTIVE.loss(pol, ref, ntok, policy)
    pairs = [PairLogps(pol[i], pol[i + 1], ref[i], ref[i + 1], ntok[i], ntok[i + 1]) for i in (0, 2, 4)]
    expect, _ = online_sso_loss(*pairs, base="ipo", beta=0.1, theta=0.5, alpha=0.3, detach_weight=True)
    torch.testing.assert_close(losses, expect)
    w = torch.sigmoid(-(0.3 * pol[0] / ntok[0] + 0.7 * pol[1] / ntok[1]))
    torch.testing.assert_close(metrics["weight"], w)
    assert [r[1:] for r in ONLINE_OBJECTIVE.roles[:2]] == [("prompt_text", "y_plus"), ("prompt_text", "y_minus")]
    assert not math.isnan(float(losses.sum()))


def test_each_flow_names_the_other_for_a_mode_it_does_not_run():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "flows"))
    from sso_base import check_mode

    check_mode("iterative", "SSOOnlineFlow", ("online", "iterative"))
    with pytest.raises(ConfigError, match=r"mode = 'online' runs with SSOOnlineFlow: python flows/sso_online_flow.py"):
        check_mode("online", "SSOFlow", ("offline",))
    with pytest.raises(ConfigError, match=r"runs with SSOFlow: python flows/sso_flow.py"):
        check_mode("offline", "SSOOnlineFlow", ("online", "iterative"))
    check_mode("offline", "SSOMultiNodeFlow", ("offline",), nodes=2, multi_node=True)
    with pytest.raises(ConfigError, match=r"nodes = 2 \(multi-node training\) runs with SSOMultiNodeFlow: "
                                          r"python flows/sso_multinode_flow.py"):
        check_mode("offline", "SSOFlow", ("offline",), nodes=2)

"""The policy arms a run can train, as data: where their training data comes from, and which loss.

Each arm is one branch of the ``train_policy`` foreach. An arm is one of three kinds:

- ``pairs``: DPO-style training on (prompt, chosen, rejected) pairs: the pairs of one SSO generator
  (``generator`` names its variant in :data:`GENERATORS`: the published loss, lambda = 0 or
  gamma = 0) or ``pbaa_pairs`` (the initial policy's own principle-steered samples), optionally
  under another base loss (``loss``: the same pairs under IPO or SimPO);
- ``online``: the earlier online SSO loss trained on the policy itself from the initial policy's
  triples (``sso_triples``: x, x+, x-, y+, y-, y_o; one iteration of ``[run] mode = "online"``);
- ``iteration``: the policy of iteration t of ``[run] mode = "online"`` or ``"iterative"`` (trained
  in the loop; its arm only answers and is judged), named ``online_it<t>``.

A ``[generator.sweep]`` point adds a generator variant and a ``pairs`` arm on its pairs, both named
``sweep_g<gamma>_l<lam>``. Adding a fixed arm is one entry in :data:`ARMS`; a generator variant one
entry in :data:`GENERATORS`.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Arm:
    kind: str = "pairs"           # pairs | online | iteration
    pairs: str = ""               # pairs arms: "generator" (its generator's pairs) or a run artifact
    generator: str = ""           # pairs arms on generator pairs: the variant in GENERATORS
    loss: str | None = None       # base loss override (dpo | ipo | simpo); None = [policy] loss
    iteration: int = 0            # iteration arms: t (1-based)
    what: str = ""


#: Generator variants: ``[generator]`` with these keys replaced.
GENERATORS: dict[str, dict] = {
    "sso": {},
    "no_minus": {"lam": 0.0},     # L+ only (lambda = 0): the ablation without the x- term
    "no_sft": {"gamma": 0.0},     # no SFT terms (gamma = 0)
}

ARMS: dict[str, Arm] = {
    "sso": Arm(pairs="generator", generator="sso", what="DPO on the SSO generator's pairs (the method)"),
    "pbaa": Arm(pairs="pbaa_pairs", what="DPO on the initial policy's principle-steered pairs (RLCD-sys style)"),
    "sso_ipo": Arm(pairs="generator", generator="sso", loss="ipo", what="the SSO pairs under IPO"),
    "sso_simpo": Arm(pairs="generator", generator="sso", loss="simpo",
                     what="the SSO pairs under SimPO (reference-free)"),
    "sso_no_minus": Arm(pairs="generator", generator="no_minus",
                        what="DPO on the pairs of a generator trained without L- (lambda = 0)"),
    "sso_no_sft": Arm(pairs="generator", generator="no_sft",
                      what="DPO on the pairs of a generator trained without the SFT terms (gamma = 0)"),
    "online_sso": Arm(kind="online", pairs="sso_triples",
                      what="the online SSO loss W * (L_main + theta * G) on the policy, one iteration"),
}
KNOWN_ARMS = tuple(ARMS)
ONLINE_MODE_ARMS = tuple(a for a, arm in ARMS.items() if not arm.generator)   # no generator needed


@dataclass(frozen=True)
class Plan:
    """What a run trains: its generator variants (name -> ``[generator]`` overrides) and its arms."""
    generators: dict[str, dict] = field(default_factory=dict)
    arms: dict[str, Arm] = field(default_factory=dict)


def sweep_name(gamma: float, lam: float) -> str:
    return f"sweep_g{gamma:g}_l{lam:g}"


def plan_run(cfg) -> Plan:
    """The generators and arms of a run (``cfg``: an :class:`sso.config.SSOConfig`), in order:
    ``[policy] arms`` first, then one arm per sweep point (offline) or per iteration (online)."""
    arms = {a: ARMS[a] for a in cfg.policy.arms}
    if cfg.run.mode != "offline":
        arms.update({f"online_it{t}": Arm(kind="iteration", iteration=t,
                                          what=f"the policy after {cfg.run.mode} iteration {t}")
                     for t in range(1, cfg.run.iterations + 1)})
        return Plan({}, arms)
    generators = {arm.generator: GENERATORS[arm.generator] for arm in arms.values() if arm.generator}
    sw = cfg.generator.sweep
    if sw.gamma or sw.lam:
        for gamma, lam in itertools.product(sw.gamma or (cfg.generator.gamma,), sw.lam or (cfg.generator.lam,)):
            name = sweep_name(gamma, lam)
            generators[name] = {"gamma": gamma, "lam": lam}
            arms[name] = Arm(pairs="generator", generator=name,
                             what=f"DPO on the pairs of the sweep generator gamma={gamma:g}, lambda={lam:g}")
    return Plan(generators, arms)


def generator_config(generator_cfg, overrides: dict):
    """``[generator]`` with a variant's overrides applied."""
    return dataclasses.replace(generator_cfg, **overrides) if overrides else generator_cfg


def arm_policy_config(policy_cfg, arm: str | Arm):
    """``[policy]`` with the arm's loss override applied (an online arm: ``[policy.online] loss``)."""
    spec = ARMS[arm] if isinstance(arm, str) else arm
    override = policy_cfg.online.loss if spec.kind == "online" else spec.loss
    return dataclasses.replace(policy_cfg, loss=override) if override else policy_cfg


def arm_source(arm: Arm) -> str:
    """Where an arm's training data comes from, as a results column (traceability)."""
    if arm.kind == "iteration":
        return f"online iteration {arm.iteration} (its own samples)"
    if arm.generator:
        return f"generator {arm.generator}"
    return arm.pairs


def online_mode_error(cfg) -> str | None:
    """Why ``[policy] arms`` cannot run with ``[run] mode = "online"`` / ``"iterative"`` (which train
    no offline generator)."""
    if cfg.run.mode == "offline":
        return None
    bad = [a for a in cfg.policy.arms if ARMS[a].generator]
    if bad or cfg.generator.sweep.gamma or cfg.generator.sweep.lam:
        what = f"arms {', '.join(bad)} need" if bad else "[generator.sweep] needs"
        return (f"[run] mode = '{cfg.run.mode}' trains no offline SSO generator, but {what} one: set [policy] arms to "
                f"some of {', '.join(ONLINE_MODE_ARMS)} (the iterations are added as arms online_it1..T)"
                f"{'' if bad else ' and remove [generator.sweep]'}")
    return None

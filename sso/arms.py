"""The policy arms a run can train, as data: which preference pairs, and which loss.

Each arm is one branch of the ``train_policy`` foreach. An arm names the pairs it trains on (an
artifact of the run: ``sso_pairs`` from the SSO generator, ``pbaa_pairs`` from the initial policy's
own principle-steered samples) and, optionally, a base loss that replaces ``[policy] loss`` for it
(the same pairs under another objective). Adding an arm is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    pairs: str                 # the run artifact holding its (prompt, chosen, rejected) pairs
    loss: str | None = None    # base loss override (dpo | ipo | simpo); None = [policy] loss
    what: str = ""


ARMS: dict[str, Arm] = {
    "sso": Arm("sso_pairs", what="DPO on the SSO generator's pairs (the method)"),
    "pbaa": Arm("pbaa_pairs", what="DPO on the initial policy's principle-steered pairs (RLCD-sys style)"),
    "sso_ipo": Arm("sso_pairs", loss="ipo", what="the SSO pairs under IPO"),
    "sso_simpo": Arm("sso_pairs", loss="simpo", what="the SSO pairs under SimPO (reference-free)"),
}
KNOWN_ARMS = tuple(ARMS)


def arm_policy_config(policy_cfg, arm: str):
    """``[policy]`` with the arm's loss override applied."""
    import dataclasses

    override = ARMS[arm].loss
    return dataclasses.replace(policy_cfg, loss=override) if override else policy_cfg

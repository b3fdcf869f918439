"""Step ``route_training``: the artifacts both training routes start from, and which route.

``[run] mode = "offline"`` (the published SSO) goes on to one generator per variant the arms need
(:func:`sso.arms.plan_run`); ``"online"`` (the earlier SSO) and ``"iterative"`` (the published SSO
repeated) to the self-looping ``online_iteration`` step, whose first iteration trains on the
initial policy's ``sso_triples``. Every artifact either
route may set is given its empty value here, so that the steps after the two routes meet
(``fan_out_arms`` onwards) read the same names whichever route ran. Pure.
"""

from __future__ import annotations

import pandas as pd

from sso.arms import plan_run
from sso.config import SSOConfig


def initial_artifacts(cfg: SSOConfig, sso_triples: pd.DataFrame) -> dict:
    return {
        "route": "offline" if cfg.run.mode == "offline" else "loop",
        # offline: the generator variants (foreach) and, after join_generators, their outputs
        "generators": list(plan_run(cfg).generators),
        "generator_pairs": {}, "generator_adapters": {}, "generator_histories": {},
        "generator_summaries": {}, "preference_reports": {},
        "sso_pairs": None, "generator_adapter": None, "generator_history": None,
        "generator_summary": {}, "preference_report": {},
        # online: the loop state (iteration t reads what t - 1 wrote)
        "iteration": 0, "iteration_triples": sso_triples, "online_policies": [],
        "online_histories": [], "online_summaries": [], "online_training_data": [],
        "online_sampling_reports": [], "online_generators": [], "online_generator_histories": [],
    }

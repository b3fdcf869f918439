"""Step ``join_generators`` (join over generator variants): each variant's outputs, by variant.

Input: one dict per ``train_generator`` branch (generator, generator_adapter, generator_history,
generator_summary, sso_pairs, preference_report). Output: ``generator_pairs``,
``generator_adapters``, ``generator_histories``, ``generator_summaries``, ``preference_reports``
(variant -> value), and the single-generator names (``sso_pairs``, ``generator_adapter``,
``generator_history``, ``generator_summary``, ``preference_report``) of the ``sso`` variant
(``[generator]`` as written) when the run trains it, else of the first variant. Pure.
"""

from __future__ import annotations


def join_generators(per_generator: list[dict]) -> dict:
    by = {g["generator"]: g for g in per_generator}
    main = by.get("sso", per_generator[0])
    return {
        "generator_pairs": {n: g["sso_pairs"] for n, g in by.items()},
        "generator_adapters": {n: g["generator_adapter"] for n, g in by.items()},
        "generator_histories": {n: g["generator_history"] for n, g in by.items()},
        "generator_summaries": {n: g["generator_summary"] for n, g in by.items()},
        "preference_reports": {n: g["preference_report"] for n, g in by.items()},
        "generator": main["generator"], "sso_pairs": main["sso_pairs"],
        "generator_adapter": main["generator_adapter"], "generator_history": main["generator_history"],
        "generator_summary": main["generator_summary"], "preference_report": main["preference_report"],
    }

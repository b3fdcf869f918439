"""Step ``end`` export: write a run's results to plain files anyone can load without Metaflow.

Layout of ``out_dir`` (see :mod:`sso.report.export`, which also reads it back)::

    manifest.json                      run, model, files with sha256, adapters with logits probes
    results.csv                        one row per arm
    preferences/<arm>.parquet|.jsonl   prompt / chosen / rejected (+ query_id, principles)
    adapters/generator/                peft adapter directory (PeftModel.from_pretrained)
    adapters/policy-<arm>/             peft adapter directory per arm

Returns the dict of written paths (stored as the ``exported`` artifact).
"""

from __future__ import annotations

import pandas as pd

from sso.report.export import write_export


def export_run(out_dir: str, *, results: pd.DataFrame, sso_pairs: pd.DataFrame,
               pbaa_pairs: pd.DataFrame, generator_adapter: dict[str, bytes] | None,
               policy_adapters: dict[str, dict[str, bytes]],
               generator_summary: dict | None = None, policy_summaries: dict[str, dict] | None = None,
               run_info: dict | None = None) -> dict[str, str]:
    adapters, probes = {}, {}
    if generator_adapter is not None:
        adapters["generator"] = generator_adapter
        probes["generator"] = (generator_summary or {}).get("logits_probe")
    for arm, files in policy_adapters.items():
        adapters[f"policy-{arm}"] = files
        probes[f"policy-{arm}"] = (policy_summaries or {}).get(arm, {}).get("logits_probe")
    return write_export(out_dir, results=results, preferences={"sso": sso_pairs, "pbaa": pbaa_pairs},
                        adapters=adapters, probes=probes, run_info=run_info)

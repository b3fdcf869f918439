"""Step ``end`` export: write a run's results to plain files anyone can load without Metaflow.

Layout of ``out_dir``::

    results.csv                        one row per arm
    preferences/<arm>.parquet|.jsonl   prompt / chosen / rejected (+ query_id, principles)
    adapters/generator/                peft adapter directory (PeftModel.from_pretrained)
    adapters/policy-<arm>/             peft adapter directory per arm

Returns the dict of written paths (stored as the ``exported`` artifact).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from sso.adapters import write_adapter


def export_run(out_dir: str, *, results: pd.DataFrame, sso_pairs: pd.DataFrame,
               pbaa_pairs: pd.DataFrame, generator_adapter: dict[str, bytes] | None,
               policy_adapters: dict[str, dict[str, bytes]]) -> dict[str, str]:
    out = Path(out_dir)
    (out / "preferences").mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    results.to_csv(out / "results.csv", index=False)
    written["results"] = str(out / "results.csv")
    for arm, pairs in (("sso", sso_pairs), ("pbaa", pbaa_pairs)):
        base = out / "preferences" / arm
        pairs.to_parquet(f"{base}.parquet", index=False)
        pairs.to_json(f"{base}.jsonl", orient="records", lines=True, force_ascii=False)
        written[f"preferences_{arm}"] = f"{base}.parquet"
    if generator_adapter is not None:
        written["adapter_generator"] = str(write_adapter(generator_adapter, out / "adapters" / "generator"))
    for arm, files in policy_adapters.items():
        written[f"adapter_policy_{arm}"] = str(write_adapter(files, out / "adapters" / f"policy-{arm}"))
    return {k: os.path.abspath(v) for k, v in written.items()}

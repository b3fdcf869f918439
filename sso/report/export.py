"""A run's results as plain files anyone can load without Metaflow, and helpers to read them back.

Layout of an export directory (written by the flow's ``end`` step and by
``python -m sso export <run-id> DIR``)::

    manifest.json                      what is here: run, model, files (bytes, sha256, rows),
                                       adapters (base model, logits probe recorded at training)
    results.csv                        one row per arm (sso.report.results columns)
    preferences/<arm>.parquet|.jsonl   prompt / chosen / rejected (+ query_id, principles): the
                                       format TRL's DPOTrainer and ``datasets`` read unchanged
    adapters/generator/                peft adapter directories (PeftModel.from_pretrained)
    adapters/policy-<arm>/
    cards/<step>-<task>.html           the run's cards as self-contained HTML (when available)

Reading back, no Metaflow needed::

    from sso.report.export import load_manifest, load_preferences, load_adapter_model
    prefs = load_preferences("out/SSOFlow-123", "sso")          # DataFrame
    model = load_adapter_model("out/SSOFlow-123", "policy-sso")  # base + LoRA, eval mode
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sso.training.adapters import write_adapter

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_entry(root: Path, path: Path, rows: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size,
                             "sha256": _sha256(path)}
    if rows is not None:
        entry["rows"] = int(rows)
    return entry


def _jsonable(value: Any) -> Any:
    """Summaries hold numpy/torch scalars now and then; the manifest is plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (ValueError, AttributeError):
            return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _write_adapter_entry(out: Path, name: str, adapter_files: dict[str, bytes], probe: dict | None,
                         written: dict[str, str], files: list[dict]) -> dict[str, Any]:
    """Write one adapter directory; add its path to ``written`` and its files to ``files``;
    return its manifest entry."""
    from sso.training.policy import is_full_model, write_model_files

    full = is_full_model(adapter_files)   # [*] finetuning = "full": a from_pretrained directory
    d = (write_model_files if full else write_adapter)(adapter_files, out / "adapters" / name)
    written[f"adapter_{name.replace('-', '_')}"] = str(d)
    files.extend(_file_entry(out, f) for f in sorted(d.iterdir()))
    if full:
        return {"path": d.relative_to(out).as_posix(), "kind": "full_model", "logits_probe": probe}
    config = json.loads((d / "adapter_config.json").read_text())
    return {"path": d.relative_to(out).as_posix(), "kind": "lora",
            "base_model_name_or_path": config.get("base_model_name_or_path"),
            "r": config.get("r"), "target_modules": config.get("target_modules"), "logits_probe": probe}


def write_export(out_dir: str | os.PathLike, *, results, preferences: dict[str, Any],
                 adapters: dict[str, dict[str, bytes]], probes: dict[str, dict] | None = None,
                 run_info: dict[str, Any] | None = None) -> dict[str, str]:
    """Write results, preference tables and adapters to ``out_dir`` (layout in the module doc).

    ``preferences``: arm -> DataFrame with prompt/chosen/rejected; ``adapters``: name
    (``generator``, ``policy-<arm>``) -> adapter file bytes; ``probes``: name -> the trainer's
    ``logits_probe``; ``run_info``: flow, run id, model, ... copied into the manifest.
    Returns {key: absolute path} of what was written (``results``, ``preferences_<arm>``,
    ``adapter_<name with - as _>``, ``manifest``).
    """
    out = Path(out_dir).resolve()
    (out / "preferences").mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    files: list[dict] = []

    results.to_csv(out / "results.csv", index=False)
    written["results"] = str(out / "results.csv")
    files.append(_file_entry(out, out / "results.csv", rows=len(results)))
    for arm, pairs in preferences.items():
        missing = [c for c in ("prompt", "chosen", "rejected") if c not in pairs.columns]
        if missing:
            raise ValueError(f"preferences[{arm!r}] lacks column(s) {missing}; expected prompt, "
                             f"chosen, rejected, got {list(pairs.columns)}")
        base = out / "preferences" / arm
        pairs.to_parquet(f"{base}.parquet", index=False)
        pairs.to_json(f"{base}.jsonl", orient="records", lines=True, force_ascii=False)
        written[f"preferences_{arm}"] = f"{base}.parquet"
        for ext in (".parquet", ".jsonl"):
            files.append(_file_entry(out, Path(f"{base}{ext}"), rows=len(pairs)))

    adapter_entries = {name: _write_adapter_entry(out, name, adapter_files, (probes or {}).get(name), written, files)
                       for name, adapter_files in adapters.items()}

    manifest = {
        "format_version": FORMAT_VERSION,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **_jsonable(run_info or {}),
        "arms": list(preferences),
        "files": files,
        "adapters": _jsonable(adapter_entries),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    written["manifest"] = str(out / MANIFEST)
    return written


EXPORT_ARTIFACTS = ("results", "sso_pairs", "pbaa_pairs", "generator_adapter", "policy_adapters")


def export_run(out_dir: str | os.PathLike, data: Any, *, run_info: dict[str, Any] | None = None) -> dict[str, str]:
    """Export a run's artifacts to ``out_dir``: the one assembly of adapters and logits probes.

    ``data`` is anything with the run's artifacts as attributes (the flow itself in ``end``, or a
    Client API ``task.data`` in ``python -m sso export``): :data:`EXPORT_ARTIFACTS`, plus
    ``generator_summary`` and ``policy_summaries`` when present (their logits probes go into the
    manifest). Returns the written paths (see :func:`write_export`).
    """
    gen_summary = getattr(data, "generator_summary", None) or {}
    pol_summaries = getattr(data, "policy_summaries", None) or {}
    adapters, probes = {}, {}
    if data.generator_adapter is not None:
        adapters["generator"] = data.generator_adapter
        probes["generator"] = gen_summary.get("logits_probe")
    preferences = {"sso": data.sso_pairs, "pbaa": data.pbaa_pairs}
    main = getattr(data, "generator", None) or "sso"
    variants = getattr(data, "generator_adapters", None) or {}
    for name, files in variants.items():   # the other generator variants (ablations, sweep points)
        if name != main:
            adapters[f"generator-{name}"] = files
            probes[f"generator-{name}"] = data.generator_summaries.get(name, {}).get("logits_probe")
            preferences[f"generator-{name}"] = data.generator_pairs[name]
    for arm, files in data.policy_adapters.items():
        adapters[f"policy-{arm}"] = files
        probes[f"policy-{arm}"] = pol_summaries.get(arm, {}).get("logits_probe")
    return write_export(out_dir, results=data.results,
                        preferences={k: v for k, v in preferences.items() if v is not None},
                        adapters=adapters, probes=probes, run_info=run_info)


def load_manifest(export_dir: str | os.PathLike) -> dict:
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{export_dir} is not an sso export: no {MANIFEST} (export a run "
                                "with `python -m sso export <run-id> DIR`)")
    return json.loads(path.read_text())


def load_preferences(export_dir: str | os.PathLike, arm: str):
    """An arm's preference pairs (prompt, chosen, rejected, ...) as a DataFrame."""
    import pandas as pd

    path = Path(export_dir) / "preferences" / f"{arm}.parquet"
    if not path.is_file():
        arms = sorted(p.stem for p in (Path(export_dir) / "preferences").glob("*.parquet"))
        raise FileNotFoundError(f"no preferences for arm {arm!r} in {export_dir}; have {arms}")
    return pd.read_parquet(path)


def load_adapter_model(export_dir: str | os.PathLike, name: str, *, base_model: str | None = None,
                       dtype: str = "float32", device: str = "cpu"):
    """Base model + the exported adapter ``name`` (``generator``, ``policy-<arm>``), eval mode.

    ``base_model`` defaults to the model the adapter was trained on (from the manifest; the tiny
    model is rebuilt offline when its recorded directory is gone).
    """
    from sso.models.loading import load_model, resolve_model_path
    from sso.models.tiny import TINY_NAME

    manifest = load_manifest(export_dir)
    entry = manifest.get("adapters", {}).get(name)
    if entry is None:
        raise KeyError(f"no adapter {name!r} in {export_dir}; have {sorted(manifest.get('adapters', {}))}")
    if entry.get("kind") == "full_model":     # a fully fine-tuned model: the directory is the model
        return load_model(str(Path(export_dir) / entry["path"]), dtype=dtype, device=device)
    if base_model is None:
        base_model = entry.get("base_model_name_or_path") or manifest.get("model", "")
        if not os.path.isdir(base_model) and manifest.get("model") == TINY_NAME:
            base_model = TINY_NAME
    return load_model(resolve_model_path(base_model), dtype=dtype, device=device,
                      adapter=str(Path(export_dir) / entry["path"]))

"""Validation rules of the config tables and the generic TOML-table -> dataclass builder.

:mod:`sso.config` declares the tables; this module checks them: each rule is (check, message)
for one key of one table path, types are checked from the dataclass annotations.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

from sso.arms import KNOWN_ARMS


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the TOML key."""


MAX_FOREACH = 100   # Metaflow refuses a foreach over more items without --max-num-splits

_POSITIVE = (lambda v: v > 0, "must be > 0")
_NONNEG = (lambda v: v >= 0, "must be >= 0")
_PROB = (lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1")
_TRAIN_RULES = {
    "loss": (lambda v: v in ("dpo", "ipo", "simpo"), "must be one of: dpo, ipo, simpo"),
    "beta": _POSITIVE,
    "label_smoothing": (lambda v: 0.0 <= v < 0.5, "must be in [0, 0.5)"),
    "gamma": _NONNEG,
    "lam": _NONNEG,
    "learning_rate": _POSITIVE,
    "epochs": _POSITIVE,
    "max_steps": _NONNEG,
    "batch_size": _POSITIVE,
    "grad_accum": _POSITIVE,
    "warmup_ratio": _PROB,
    "max_grad_norm": _NONNEG,
    "weight_decay": _NONNEG,
    "log_every": _POSITIVE,
    "checkpoint_every": _NONNEG,
    "finetuning": (lambda v: v in ("lora", "full"), "must be one of: lora, full"),
    "strategy": (lambda v: v in ("ddp", "fsdp", "zero2", "zero3"), "must be one of: ddp, fsdp, zero2, zero3"),
}
_LORA_RULES = {
    "r": _POSITIVE,
    "alpha": _POSITIVE,
    "dropout": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    "target_modules": (lambda v: len(v) > 0, "must name at least one module"),
}
_NO_SPACE = (lambda v: v == v.strip() and " " not in v, "must not contain spaces")
_RES_RULES = {"cpu": _POSITIVE, "memory": _POSITIVE, "gpu": _NONNEG, "nodes": _POSITIVE, "processes": _NONNEG, "timeout_minutes": _NONNEG,
              "image": _NO_SPACE, "queue": _NO_SPACE, "shared_memory": _NONNEG}
_SWEEP = (lambda v: all(x >= 0 for x in v) and len(set(v)) == len(v) and len(v) <= 10,
          "must be a list of at most 10 distinct numbers >= 0")
_KEY_ENV = (lambda v: v.replace("_", "").isalnum() and not v.startswith("sk-"),
            "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), never the key itself")

RULES: dict[str, dict[str, tuple]] = {
        "model": {
        "name": (lambda v: v.strip() != "", "must not be empty"),
        "dtype": (lambda v: v in ("float32", "bfloat16", "float16", "auto"),
                  "must be one of: float32, bfloat16, float16, auto"),
        "device": (lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"),
                   "must be auto, cpu, cuda or cuda:N"),
        "max_length": _POSITIVE,
    },
    "data": {
        "source": (lambda v: v.strip() != "", "must not be empty"),
        "format": (lambda v: v in ("auto", "jsonl", "csv", "parquet", "hf"),
                   "must be one of: auto, jsonl, csv, parquet, hf"),
        "text_column": (lambda v: v.strip() != "", "must not be empty"),
        "encoding": (lambda v: v.strip() != "", "must not be empty (e.g. utf-8, latin-1, cp1252)"),
        "n_queries": _POSITIVE,
        "n_generator_queries": _NONNEG,
        "n_eval": _POSITIVE,
        "eval_seed": _NONNEG,
        "max_query_chars": _POSITIVE,
    },
    "principles": {
        "source": (lambda v: v in ("catalogue", "model", "verifiable"),
                   "must be one of: catalogue, model, verifiable"),
        "rules": (lambda v: set(v) <= set(verifiable_rule_ids()), "must name rules from sso.data.verifiable"
                  " (see RULE_IDS there)"),
        "n_features": (lambda v: 1 <= v <= 7, "must be between 1 and 7"),
        "placement": (lambda v: v in ("system", "user"), "must be one of: system, user"),
        "concision_prob": _PROB,
        "backend": (lambda v: v in ("auto", "transformers", "vllm", "openai"),
                    "must be one of: auto, transformers, vllm, openai"),
        "api_key_env": _KEY_ENV,
        "fallback": (lambda v: v in ("catalogue", "generic"), "must be one of: catalogue, generic"),
        "temperature": _NONNEG,
        "top_p": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
        "max_new_tokens": _POSITIVE,
        "batch_size": _POSITIVE,
        "max_concurrency": _POSITIVE,
        "max_retries": _NONNEG,
        "timeout_s": _POSITIVE,
    },
    "sampling": {
        "backend": (lambda v: v in ("auto", "transformers", "vllm"),
                    "must be one of: auto, transformers, vllm"),
        "temperature": _NONNEG,
        "top_p": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
        "max_new_tokens": _POSITIVE,
        "batch_size": _POSITIVE,
        "shards": (lambda v: 1 <= v <= MAX_FOREACH, f"must be between 1 and {MAX_FOREACH} (Metaflow's foreach limit)"),
        "shard_size": _NONNEG,
        "capped": (lambda v: v in ("keep", "drop"), "must be one of: keep, drop"),
        "gpu_memory_utilization": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
        "max_model_len": _NONNEG,
        "tensor_parallel_size": _POSITIVE,
        "max_lora_rank": (lambda v: v in (0, 1, 8, 16, 32, 64, 128, 256, 320, 512),
                          "must be 0 (from the adapter) or one of vLLM's ranks: "
                          "1, 8, 16, 32, 64, 128, 256, 320, 512"),
        "kv_cache_gb": _NONNEG,
    },
    "run": {"mode": (lambda v: v in ("offline", "online", "iterative"), "must be one of: offline, online, iterative"),
            "iterations": (lambda v: 1 <= v <= 20, "must be between 1 and 20")},
    "generator": _TRAIN_RULES,
    "generator.lora": _LORA_RULES,
    "generator.sweep": {"gamma": _SWEEP, "lam": _SWEEP},
    "policy.online": {"loss": (lambda v: v in ("dpo", "ipo"), "must be one of: dpo, ipo"),
                      "theta": _NONNEG, "alpha": _PROB},
    "policy": {
        **_TRAIN_RULES,
        "arms": (lambda v: len(v) > 0 and set(v) <= set(KNOWN_ARMS) and len(set(v)) == len(v),
                 f"must be a non-empty list of distinct arms from: {', '.join(KNOWN_ARMS)}"),
    },
    "policy.lora": _LORA_RULES,
    "eval": {"temperature": _NONNEG, "top_p": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
             "max_new_tokens": _POSITIVE},
    "judge": {
        "backend": (lambda v: v in ("local", "openai"), "must be one of: local, openai"),
        "max_concurrency": _POSITIVE,
        "max_retries": _NONNEG,
        "timeout_s": _POSITIVE,
        "max_requests": _NONNEG,
        "max_cost_usd": _NONNEG,
        "accuracy_pairs": _NONNEG,
        "max_failed_fraction": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
        "api_key_env": (lambda v: v.replace("_", "").isalnum() and not v.startswith("sk-"),
                        "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                        "never the key itself"),
        "secrets": (lambda v: all(x.strip() and " " not in x and not x.startswith("sk-") for x in v),
                    "must be a list of secret source names such as 'aws-secrets-manager.sso/judge' "
                    "(never the key itself)"),
    },
    "resources.default": _RES_RULES,
    "resources.sample": _RES_RULES,
    "resources.train": _RES_RULES,
    "resources.judge": _RES_RULES,
    "resources.principles": _RES_RULES,
}


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against a dataclass field type; return (ok, coerced value)."""
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if typing.get_origin(tp) is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False, value
        items = []
        for item in value:
            ok, item = _type_ok(item, item_tp)
            if not ok:
                return False, value
            items.append(item)
        return True, tuple(items)
    raise TypeError(f"unsupported config field type {tp!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])[2:]}s"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def verifiable_rule_ids() -> tuple[str, ...]:
    """The rule ids of the verifiable principle catalogue (imported only when a config names rules)."""
    from sso.data.verifiable import RULE_IDS

    return RULE_IDS


def build_table(cls: type, data: Mapping[str, Any], path: str) -> Any:
    """Dataclass ``cls`` from a TOML table at ``path``: unknown keys, wrong types and values out of
    range raise :class:`ConfigError` naming the key."""
    where = f"[{path}]" if path else "top level"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        kind = "table" if not path else "key"
        raise ConfigError(
            f"{where} unknown {kind} '{unknown[0]}'; allowed: {', '.join(sorted(fields))}")
    kwargs = {}
    rules = RULES.get(path, {})
    for name, value in data.items():
        tp = hints[name]
        sub = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_table(tp, value, sub)
            continue
        ok, value = _type_ok(value, tp)
        if not ok:
            raise ConfigError(f"[{path}] {name} must be {_type_name(tp)}, got {data[name]!r}")
        if name in rules:
            check, msg = rules[name]
            if not check(value):
                raise ConfigError(f"[{path}] {name} {msg}, got {data[name]!r}")
        kwargs[name] = value
    return cls(**kwargs)


def to_plain(obj: Any) -> Any:
    """A config dataclass as plain dicts and lists (the form Metaflow stores)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    return obj



"""Typed, validated run configuration.

A config is a TOML document with one table per concern (``[run]``, ``[model]``, ``[data]``,
``[principles]``, ``[sampling]``, ``[generator]``, ``[policy]``, ``[eval]``, ``[judge]``,
``[resources.*]``). Each table maps onto a frozen dataclass below. Every key is optional (the
defaults are the tiny offline CPU setup), but an unknown key or a value of the wrong type or range
is rejected with a :class:`ConfigError` naming the TOML key, e.g.::

    [sampling] unknown key 'temprature'; allowed: backend, batch_size, ...
    [generator] beta must be > 0, got -1.0

``parse_config_text`` is what the Metaflow ``Config`` parser calls, so a bad config fails before
any task starts. It returns a plain dict (defaults filled in) that ``SSOConfig.from_dict`` turns
back into dataclasses inside each step.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the TOML key."""


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    output_dir: str = "out"           # where `end` exports preference data, adapters and tables
    max_num_splits: int = 100          # informational; shards are capped to stay below Metaflow's limit


@dataclass(frozen=True)
class ModelConfig:
    name: str = "sso-tiny"             # "sso-tiny" (built offline), a Hugging Face id, or a local dir
    dtype: str = "float32"             # float32 | bfloat16 | float16 | auto
    device: str = "auto"               # auto | cpu | cuda
    revision: str = ""                 # Hub revision, empty for default
    trust_remote_code: bool = False
    max_length: int = 512              # prompt + response tokens for scoring/training


@dataclass(frozen=True)
class DataConfig:
    source: str = "builtin"            # "builtin", or a .jsonl/.csv/.parquet file, or a `datasets` dir
    format: str = "auto"               # auto | jsonl | csv | parquet | hf
    text_column: str = "prompt"
    id_column: str = ""                # empty: ids derived from row position
    n_queries: int = 48                # train (policy-stage) queries
    n_generator_queries: int = 0       # first N train queries train the generator; 0 = all of them
    n_eval: int = 16                   # held-out queries the judge evaluates on
    max_query_chars: int = 4000
    dedupe: bool = True


@dataclass(frozen=True)
class PrinciplesConfig:
    source: str = "catalogue"          # catalogue | model (a principle model writes each pair)
    n_features: int = 2                # catalogue (and catalogue fallback): features per query
    concision_prob: float = 0.2
    # source = "model" (the published method; see sso/data/principle_writer.py)
    model: str = ""                    # principle model: "" = the policy itself; a local dir / HF id;
                                       #   with backend = "openai" the model name at the endpoint
    backend: str = "auto"              # auto | transformers | vllm (local model) | openai (endpoint)
    base_url: str = ""                 # openai backend: any OpenAI-compatible endpoint
    api_key_env: str = "OPENAI_API_KEY"  # NAME of the env var holding the key, never the key
    fallback: str = "catalogue"        # on empty/unparsable output: catalogue pair | generic pair
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 160
    batch_size: int = 16               # local engines
    max_concurrency: int = 8           # openai backend
    max_retries: int = 5               # openai backend
    timeout_s: float = 120.0           # openai backend, per request


@dataclass(frozen=True)
class SamplingConfig:
    backend: str = "auto"              # auto | transformers | vllm
    temperature: float = 0.7
    top_p: float = 0.8
    max_new_tokens: int = 48
    plain_greedy: bool = False         # decode y_o (no principle) greedily, as the authors' code does
    batch_size: int = 16
    shards: int = 2                    # foreach fan-out of sample_responses / generate_preferences
    shard_size: int = 0                # > 0: queries per shard (overrides `shards`); 0 = use `shards`
    # vLLM engine options (backend = vllm); 0 / empty = the engine's default
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 0             # prompt + response tokens per sequence; 0 = the model's limit
    tensor_parallel_size: int = 1
    enforce_eager: bool = False        # skip CUDA-graph capture (faster start, slower decode)
    max_lora_rank: int = 0             # 0 = the adapter's rank rounded up to one vLLM accepts
    kv_cache_gb: float = 0.0           # explicit KV-cache size; 0 = engine default (1 GiB on CPU)


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "dpo"                  # dpo | ipo (the base preference loss)
    beta: float = 0.1
    label_smoothing: float = 0.0       # conservative DPO; 0 = plain DPO
    gamma: float = 0.1                 # SSO only: weight of the SFT terms
    lam: float = 1.0                   # SSO only: weight of L- (lambda)
    learning_rate: float = 5e-4
    epochs: int = 1
    max_steps: int = 0                 # > 0 caps the number of optimizer steps
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    log_every: int = 1
    checkpoint_every: int = 0          # optimizer steps between checkpoints; 0 = off
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class PolicyConfig(TrainConfig):
    arms: tuple[str, ...] = ("sso", "pbaa")


@dataclass(frozen=True)
class EvalConfig:
    temperature: float = 0.7
    top_p: float = 0.8
    max_new_tokens: int = 48
    greedy: bool = False


@dataclass(frozen=True)
class JudgeConfig:
    backend: str = "local"             # local | openai
    model: str = "gpt-4-1106-preview"  # judge model name at the endpoint
    base_url: str = ""                 # any OpenAI-compatible endpoint; empty = api.openai.com
    api_key_env: str = "OPENAI_API_KEY"  # NAME of the env var holding the key, never the key
    local_model: str = ""              # local judge model; empty = the policy base model
    max_concurrency: int = 8
    max_retries: int = 5
    timeout_s: float = 60.0
    max_requests: int = 0              # budget guard; 0 = no limit
    max_cost_usd: float = 0.0          # budget guard; 0 = no limit
    accuracy_pairs: int = 200          # preference-data accuracy sample size per arm
    cache_dir: str = ""                # empty = ~/.cache/sso-flow/judge
    # Metaflow @secrets sources for the judge step (e.g. "aws-secrets-manager.sso/judge", whose JSON
    # holds {"OPENAI_API_KEY": "..."}): how the key reaches remote tasks. Empty = none (local runs
    # read the variable from the launching shell). Never put the key itself here.
    secrets: tuple[str, ...] = ()
    secrets_role: str = ""             # IAM role for fetching them; empty = METAFLOW_DEFAULT_SECRETS_ROLE


@dataclass(frozen=True)
class StepResources:
    cpu: int = 1
    memory: int = 4096                 # MiB
    gpu: int = 0
    timeout_minutes: int = 0           # 0 = no @timeout
    # Remote-only settings, applied when the step runs under @batch / @kubernetes (e.g. via
    # `run --with batch`); empty/0 = the --with value or the Metaflow profile's default.
    image: str = ""                    # container image for this step
    queue: str = ""                    # AWS Batch job queue (ignored on Kubernetes)
    shared_memory: int = 0             # MiB of /dev/shm (torch DataLoader / NCCL / vLLM); 0 = default


@dataclass(frozen=True)
class ResourcesConfig:
    default: StepResources = field(default_factory=StepResources)
    sample: StepResources = field(default_factory=StepResources)
    train: StepResources = field(default_factory=StepResources)
    judge: StepResources = field(default_factory=StepResources)


@dataclass(frozen=True)
class SSOConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    principles: PrinciplesConfig = field(default_factory=PrinciplesConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generator: TrainConfig = field(default_factory=TrainConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SSOConfig":
        return _build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def replace(self, **changes: Any) -> "SSOConfig":
        """Return a copy with dotted-path overrides applied: ``cfg.replace(**{"run.seed": 3})``."""
        data = self.to_dict()
        for dotted, value in changes.items():
            *tables, key = dotted.split(".")
            node = data
            for t in tables:
                if t not in node or not isinstance(node[t], dict):
                    raise ConfigError(f"unknown config table '{'.'.join(tables)}' in override '{dotted}'")
                node = node[t]
            if key not in node:
                raise ConfigError(f"unknown config key '{dotted}'")
            node[key] = value
        return SSOConfig.from_dict(data)


# ----------------------------------------------------------------------------------------------
# Validation rules: (table path, key) -> (check, message). Types are checked generically.
# ----------------------------------------------------------------------------------------------

_POSITIVE = (lambda v: v > 0, "must be > 0")
_NONNEG = (lambda v: v >= 0, "must be >= 0")
_PROB = (lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1")
_TRAIN_RULES = {
    "loss": (lambda v: v in ("dpo", "ipo"), "must be one of: dpo, ipo"),
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
}
_LORA_RULES = {
    "r": _POSITIVE,
    "alpha": _POSITIVE,
    "dropout": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    "target_modules": (lambda v: len(v) > 0, "must name at least one module"),
}
_NO_SPACE = (lambda v: v == v.strip() and " " not in v, "must not contain spaces")
_RES_RULES = {"cpu": _POSITIVE, "memory": _POSITIVE, "gpu": _NONNEG, "timeout_minutes": _NONNEG,
              "image": _NO_SPACE, "queue": _NO_SPACE, "shared_memory": _NONNEG}
KNOWN_ARMS = ("sso", "pbaa")
_KEY_ENV = (lambda v: v.replace("_", "").isalnum() and not v.startswith("sk-"),
            "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), never the key itself")

_RULES: dict[str, dict[str, tuple]] = {
    "run": {"max_num_splits": _POSITIVE},
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
        "n_queries": _POSITIVE,
        "n_generator_queries": _NONNEG,
        "n_eval": _POSITIVE,
        "max_query_chars": _POSITIVE,
    },
    "principles": {
        "source": (lambda v: v in ("catalogue", "model"), "must be one of: catalogue, model"),
        "n_features": (lambda v: 1 <= v <= 7, "must be between 1 and 7"),
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
        "shards": (lambda v: 1 <= v <= 100, "must be between 1 and 100 (Metaflow's foreach limit)"),
        "shard_size": _NONNEG,
        "gpu_memory_utilization": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
        "max_model_len": _NONNEG,
        "tensor_parallel_size": _POSITIVE,
        "max_lora_rank": (lambda v: v in (0, 1, 8, 16, 32, 64, 128, 256, 320, 512),
                          "must be 0 (from the adapter) or one of vLLM's ranks: "
                          "1, 8, 16, 32, 64, 128, 256, 320, 512"),
        "kv_cache_gb": _NONNEG,
    },
    "generator": _TRAIN_RULES,
    "generator.lora": _LORA_RULES,
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


def _build(cls: type, data: Mapping[str, Any], path: str) -> Any:
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
    rules = _RULES.get(path, {})
    for name, value in data.items():
        tp = hints[name]
        sub = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, sub)
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


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _cross_checks(cfg: SSOConfig) -> None:
    d = cfg.data
    if d.n_generator_queries > d.n_queries:
        raise ConfigError(
            f"[data] n_generator_queries ({d.n_generator_queries}) must be <= n_queries ({d.n_queries})")
    if cfg.sampling.shards > d.n_queries:
        raise ConfigError(
            f"[sampling] shards ({cfg.sampling.shards}) must be <= [data] n_queries ({d.n_queries})")
    s = cfg.sampling
    if s.shard_size and -(-d.n_queries // s.shard_size) > 100:
        raise ConfigError(
            f"[sampling] shard_size ({s.shard_size}) gives {-(-d.n_queries // s.shard_size)} shards "
            f"for {d.n_queries} queries; at most 100 (Metaflow's foreach limit): raise shard_size")
    p = cfg.principles
    if p.source == "model" and p.backend == "openai" and not p.model.strip():
        raise ConfigError("[principles] model must name the endpoint's model when backend = 'openai'")
    if p.source == "model" and p.base_url and p.backend != "openai":
        raise ConfigError("[principles] base_url is only used with backend = 'openai'")
    if cfg.judge.backend == "openai" and not cfg.judge.model.strip():
        raise ConfigError("[judge] model must be set when backend = 'openai'")


def validate(cfg: SSOConfig) -> SSOConfig:
    _cross_checks(cfg)
    return cfg


def parse_config_text(text: str) -> dict[str, Any]:
    """Parse and validate TOML text; return the full config as a plain dict (defaults filled in).

    This is the Metaflow ``Config`` parser: raising here stops ``run`` before any task starts.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config is not valid TOML: {exc}") from None
    cfg = validate(SSOConfig.from_dict(raw))
    return cfg.to_dict()


def load_config(path: str) -> SSOConfig:
    """Read and validate a TOML config file; errors name the file and the key."""
    with open(path, "rb") as fh:
        text = fh.read().decode("utf-8")
    try:
        return SSOConfig.from_dict(parse_config_text(text))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None

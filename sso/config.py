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

import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from sso.config_rules import MAX_FOREACH, ConfigError, build_table, to_plain

if TYPE_CHECKING:
    from sso.generation.sampling import GenerationParams

__all__ = ["ConfigError", "SSOConfig", "load_config", "parse_config_text", "validate"]


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    output_dir: str = "out"           # where `end` exports preference data, adapters and tables
    mode: str = "offline"              # offline: the published SSO (generator, then DPO arms) |
                                       #   online: the earlier iterative SSO (policy trained T times
                                       #   with the online loss) | iterative: the published SSO
                                       #   repeated T times (generator and policy from the last policy)
    iterations: int = 3                # online / iterative: T iterations (sample, train, evaluate)


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
    encoding: str = "utf-8"            # JSONL/CSV text codec (UTF-8 BOM accepted), e.g. "latin-1"
    text_column: str = "prompt"
    id_column: str = ""                # empty: ids derived from row position
    n_queries: int = 48                # train (policy-stage) queries
    n_generator_queries: int = 0       # first N train queries train the generator; 0 = all of them
    n_eval: int = 16                   # held-out queries the judge evaluates on
    eval_seed: int = 0                 # the eval split's own seed: the same eval queries for every run seed
    max_query_chars: int = 4000
    dedupe: bool = True


@dataclass(frozen=True)
class PrinciplesConfig:
    source: str = "catalogue"          # catalogue | model (a principle model writes each pair) |
                                       #   verifiable (rule-checkable pairs, see sso/data/verifiable.py)
    rules: tuple[str, ...] = ()        # verifiable: the rule pool; empty = the rules measured to steer
    placement: str = "system"          # system (the paper) | user (principle before the query; small models)
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
    capped: str = "keep"               # responses cut at max_new_tokens: keep (scored without an
                                       #   end-of-turn token) | drop (the triple or pair); counted either way
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
    finetuning: str = "lora"           # lora | full (every weight trained; reference = frozen start)
    strategy: str = "ddp"              # multi-GPU engine: ddp | fsdp (FSDP2) | zero2 | zero3 (DeepSpeed)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class SweepConfig:
    """``[generator.sweep]``: one generator per (gamma, lam) point; an empty list = the base value."""
    gamma: tuple[float, ...] = ()
    lam: tuple[float, ...] = ()


@dataclass(frozen=True)
class GeneratorConfig(TrainConfig):
    sweep: SweepConfig = field(default_factory=SweepConfig)


@dataclass(frozen=True)
class OnlineConfig:
    """``[policy.online]``: the online SSO loss ``W * (L_main + theta * G)`` (online_sso arm and
    ``[run] mode = "online"``); see :func:`sso.training.losses.online_sso_loss`."""
    loss: str = "ipo"                  # base loss of L_main and G
    theta: float = 0.1                 # weight of G
    alpha: float = 0.66                # W's mix of a(y+|x) and a(y-|x)
    use_weight: bool = True            # False: W = 1
    detach_weight: bool = False        # no gradient through W
    weight_on_g_only: bool = False     # L = L_main + W * theta * G


@dataclass(frozen=True)
class PolicyConfig(TrainConfig):
    arms: tuple[str, ...] = ("sso", "pbaa")
    online: OnlineConfig = field(default_factory=OnlineConfig)


@dataclass(frozen=True)
class DecodingConfig:
    """Decoding settings shared by ``[eval]`` and :class:`sso.generation.sampling.GenerationParams`."""
    temperature: float = 0.7
    top_p: float = 0.8
    max_new_tokens: int = 48
    greedy: bool = False


@dataclass(frozen=True)
class EvalConfig(DecodingConfig):
    """``[eval]``: how the base and the trained policies answer the eval queries."""


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
    max_failed_fraction: float = 0.0   # requests that may fail for good (listed, never scored);
                                       #   above it the step fails (what was answered stays cached)
    cache_dir: str = ""                # a local cache directory read before the flow's datastore
                                       #   (which always caches); outside a flow empty means
                                       #   ~/.cache/sso-flow/judge
    # Metaflow @secrets sources for the judge step (e.g. "aws-secrets-manager.sso/judge", whose JSON
    # holds {"OPENAI_API_KEY": "..."}): how the key reaches remote tasks. Empty = none (local runs
    # read the variable from the launching shell). Never put the key itself here.
    secrets: tuple[str, ...] = ()
    secrets_role: str = ""             # IAM role for fetching them; empty = METAFLOW_DEFAULT_SECRETS_ROLE


@dataclass(frozen=True)
class StepResources:
    cpu: int = 1
    memory: int = 4096                 # MiB
    gpu: int = 0                       # GPUs per node
    nodes: int = 1                     # train: > 1 = multi-node training (flows/sso_multinode_flow.py)
    processes: int = 0                 # train: data-parallel processes under torchrun (DDP);
                                       #   0 = one per GPU (gpu), and one on CPU
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
    principles: StepResources = field(default_factory=StepResources)   # absent = [resources.default]


@dataclass(frozen=True)
class SSOConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    principles: PrinciplesConfig = field(default_factory=PrinciplesConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SSOConfig":
        res = data.get("resources")
        if isinstance(res, Mapping) and "principles" not in res and "default" in res:
            # generate_principles ran on [resources.default] before it had its own table
            data = {**data, "resources": {**res, "principles": res["default"]}}
        return build_table(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def generation_params(self, stage: str) -> "GenerationParams":
        """Decoding settings of one sampling stage, the only place they are built.

        ``principled``: y+ | x+ and y- | x- from the policy; ``generator``: the same from the trained
        generator (its own random stream, see :func:`sso.generation.sampling.request_seed`);
        ``plain``: y_o | x (greedy when
        ``[sampling] plain_greedy``); ``eval``: base and arm answers to the eval queries (``[eval]``,
        seed + 1); ``principles``: the principle writer (``[principles]``).
        """
        from sso.generation.sampling import GenerationParams

        s, e, p, seed = self.sampling, self.eval, self.principles, self.run.seed
        steered = dict(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens)
        table = {
            "principled": steered,
            "generator": steered,
            "plain": {**steered, "greedy": s.plain_greedy},
            "eval": dict(temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens,
                         greedy=e.greedy, seed=seed + 1),
            "principles": dict(temperature=p.temperature, top_p=p.top_p, max_new_tokens=p.max_new_tokens),
        }
        if stage not in table:
            raise ValueError(f"unknown sampling stage {stage!r}; expected one of {sorted(table)}")
        return GenerationParams(**{"seed": seed, "stage": stage, **table[stage]})

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


def _cross_checks(cfg: SSOConfig) -> None:
    d = cfg.data
    if d.n_generator_queries > d.n_queries:
        raise ConfigError(
            f"[data] n_generator_queries ({d.n_generator_queries}) must be <= n_queries ({d.n_queries})")
    if cfg.sampling.shards > d.n_queries:
        raise ConfigError(
            f"[sampling] shards ({cfg.sampling.shards}) must be <= [data] n_queries ({d.n_queries})")
    s = cfg.sampling
    if s.shard_size and -(-d.n_queries // s.shard_size) > MAX_FOREACH:
        raise ConfigError(
            f"[sampling] shard_size ({s.shard_size}) gives {-(-d.n_queries // s.shard_size)} shards "
            f"for {d.n_queries} queries; at most {MAX_FOREACH} (Metaflow's foreach limit): raise shard_size")
    gpus = cfg.resources.sample.gpu
    if s.backend == "vllm" and gpus and s.tensor_parallel_size != gpus:
        raise ConfigError(
            f"[sampling] tensor_parallel_size ({s.tensor_parallel_size}) must equal [resources.sample] "
            f"gpu ({gpus}): vLLM shards the model over exactly the GPUs the step gets; for data "
            f"parallelism over more GPUs raise [sampling] shards instead")
    p = cfg.principles
    if p.source == "model" and p.backend == "openai" and not p.model.strip():
        raise ConfigError("[principles] model must name the endpoint's model when backend = 'openai'")
    if p.source == "model" and p.base_url and p.backend != "openai":
        raise ConfigError("[principles] base_url is only used with backend = 'openai'")
    if cfg.resources.train.nodes > 1 and cfg.run.mode != "offline":
        raise ConfigError(
            f"[resources.train] nodes = {cfg.resources.train.nodes} with [run] mode = '{cfg.run.mode}': "
            f"multi-node training of the online loop is not built (SSOMultiNodeFlow runs mode 'offline'); "
            f"train the loop on one node with gpu = N (one DDP process per GPU)")
    from sso.arms import online_mode_error

    if online_mode_error(cfg):
        raise ConfigError(online_mode_error(cfg))
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

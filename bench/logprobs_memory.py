"""Peak memory and time of response log-probs, forward + backward: full-vocabulary vs chunked.

- ``full``    the computation :func:`sso.training.scoring.sequence_logps` used before:
  ``logits = linear(hidden, weight, bias).float()`` ``[N, V]``, then
  ``logits.gather(targets) - logsumexp(logits)``;
- ``chunked`` :func:`sso.training.logprobs.chunked_token_logps` with the chunk size scoring uses
  (:func:`sso.training.logprobs.rows_per_chunk`, one float32 chunk of logits <= 256 MiB).

Each variant runs in its own fresh child process (``--repeats`` times, interleaved), which builds
random ``hidden [N, H]``, ``weight [V, H]`` (trainable unless ``--frozen-weight``), ``bias [V]``
(with ``--bias``) and targets, then resets the kernel's resident-set high-water mark
(``/proc/self/clear_refs``; falls back to ``ru_maxrss`` after set-up), runs ONE forward and backward
pass, and reads the high-water mark back (``VmHWM``). ``peak`` is that high-water mark minus the
resident set just before the pass: everything the pass touched, torch's CPU allocations included,
which a Python-level tracer would not see. ``grads`` is the size of the gradient tensors both
variants must return (``hidden.grad``, ``weight.grad``); ``workspace = peak - grads`` is the
log-prob computation's own memory. Time is the wall time of that one pass (median over repeats).
The last line reads ``ratio_peak=<full/chunked> ratio_workspace=<full/chunked> time_ratio=<chunked/full>``
(goal: ratio_workspace >= 4).

Presets: ``--preset small`` (V=32,768, H=256, N=4,096: under a minute) and ``--preset large``
(V=150,000, H=896, N=2,048). The full variant touches about four float32 ``[N, V]`` copies
(logits, logsumexp's temporary, the two gradients of the logits), so N=8,192 at V=150k (about
18 GB) does not fit a shared 24 GB machine and even N=4,096 (about 9.4 GB) exceeds an 8 GB cap;
``--tokens`` and the other flags override a preset, and ``--only chunked`` measures the chunked
variant alone (e.g. at N=8,192).

Usage: ``python bench/logprobs_memory.py [--preset small|large] [--tokens N] [--dtype bfloat16]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = {"small": {"vocab": 32_768, "hidden": 256, "tokens": 4_096},
           "large": {"vocab": 150_000, "hidden": 896, "tokens": 2_048}}
MiB = 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_high_water() -> tuple[int, str]:
    """Resident bytes now, and how the peak is read afterwards ('hwm' or 'maxrss')."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS") * 1024, "hwm"
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "maxrss"


def _high_water(mode: str) -> int:
    if mode == "hwm":
        return _status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(args) -> dict:
    """One forward + backward of one variant in this (fresh) process; returns its figures."""
    import torch

    from sso.training.logprobs import chunked_token_logps, rows_per_chunk

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=gen, dtype=dtype).requires_grad_()       # [N, H]
    weight = torch.randn(args.vocab, args.hidden, generator=gen, dtype=dtype).mul_(args.hidden ** -0.5)
    weight.requires_grad_(not args.frozen_weight)                                                    # [V, H]
    bias = torch.randn(args.vocab, generator=gen, dtype=dtype).requires_grad_() if args.bias else None
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=gen)                           # [N]
    chunk = args.chunk_size or rows_per_chunk(args.vocab)
    base, mode = _reset_high_water()
    start = time.perf_counter()
    if args.child == "full":
        logits = torch.nn.functional.linear(hidden, weight, bias).float()                            # [N, V]
        logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        del logits
    else:
        logps = chunked_token_logps(hidden, weight, targets, bias=bias, chunk_size=chunk)
    logps.sum().backward()
    seconds = time.perf_counter() - start
    peak = _high_water(mode) - base
    grads = sum(t.grad.numel() * t.grad.element_size() for t in (hidden, weight, bias)
                if t is not None and t.grad is not None)
    return {"variant": args.child, "chunk": chunk if args.child == "chunked" else None, "peak": peak,
            "grads": grads, "seconds": seconds, "mode": mode, "logp_sum": float(logps.sum()),
            "grad_hidden_norm": float(hidden.grad.float().norm())}


def _spawn(variant: str, argv: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", variant]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} child failed (rc {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    return {"peak": max(r["peak"] for r in runs), "grads": runs[0]["grads"],
            "seconds": statistics.median(r["seconds"] for r in runs), **{k: runs[0][k] for k in
            ("chunk", "mode", "logp_sum", "grad_hidden_norm")}}


def _print_row(name: str, s: dict) -> None:
    work = s["peak"] - s["grads"]
    chunk = f" chunk={s['chunk']}" if s["chunk"] else ""
    print(f"{name:8s} peak={s['peak'] / MiB:9.1f} MiB  grads={s['grads'] / MiB:7.1f} MiB  "
          f"workspace={work / MiB:9.1f} MiB  time={s['seconds']:7.2f} s  logp_sum={s['logp_sum']:.6g}  "
          f"|grad_hidden|={s['grad_hidden_norm']:.6g}{chunk}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--chunk-size", type=int, default=0, help="rows per chunk (0: rows_per_chunk(V))")
    parser.add_argument("--frozen-weight", action="store_true", help="LM head without grad (LoRA)")
    parser.add_argument("--bias", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("full", "chunked"))
    parser.add_argument("--child", choices=("full", "chunked"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.child:
        print(json.dumps(run_child(args)))
        return
    forwarded = list(argv if argv is not None else sys.argv[1:])
    forwarded += ["--vocab", str(args.vocab), "--hidden", str(args.hidden), "--tokens", str(args.tokens)]
    variants = [args.only] if args.only else ["full", "chunked"]
    print(f"vocab={args.vocab} hidden={args.hidden} tokens={args.tokens} dtype={args.dtype} "
          f"weight={'frozen' if args.frozen_weight else 'trainable'} bias={args.bias} threads={args.threads} "
          f"[N, V] float32 copy={args.tokens * args.vocab * 4 / MiB:.1f} MiB", flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            runs[v].append(_spawn(v, forwarded))
    summary = {v: _summary(r) for v, r in runs.items()}
    for v, s in summary.items():
        _print_row(v, s)
    print(f"peak read from: {summary[variants[0]]['mode']} (VmHWM after clear_refs, or ru_maxrss)")
    if len(summary) == 2:
        full, chunked = summary["full"], summary["chunked"]
        print(f"ratio_peak={full['peak'] / chunked['peak']:.2f} "
              f"ratio_workspace={(full['peak'] - full['grads']) / max(1, chunked['peak'] - chunked['grads']):.2f} "
              f"time_ratio={chunked['seconds'] / full['seconds']:.2f}")


if __name__ == "__main__":
    main()

"""DPO training at scale: tokens/s, MFU and peak memory of LoRA and full fine-tuning, on 1 and N GPUs.

Prepared for a GPU machine; NOT run in this repository's CI (the CPU smoke run below only checks
that it works). For each (model shape, fine-tuning mode, GPU count) the driver starts one torchrun
job of this same file in ``--worker`` mode. A worker builds a Llama of the 1B (Llama-3.2-1B) or 8B
(Llama-3-8B) shape from its config with random bf16 weights (nothing downloaded), and takes timed
optimizer steps through the real trainer (:func:`sso.training.trainer.optimizer_step`: its rank
slices, DistributedDataParallel, chunked LM head, AdamW) on fixed-length random DPO pairs with zero
reference log-probs. The per-GPU micro-batch is fixed, so N GPUs process N times the pairs per step
(weak scaling). Reported: step time, tokens/s (all GPUs), MFU (``6 N`` FLOPs per token for full
fine-tuning, ``4 N`` for LoRA, plus attention and the scored LM-head positions, against the GPUs'
dense bf16 peak), the peak allocated memory of the busiest GPU and the estimate of
:func:`sso.training.memory.estimate_training_memory` for the same run.

With ``--trl`` (and trl importable) each configuration also runs TRL's ``DPOTrainer`` on random text
of about the same token count (``precompute_ref_log_probs=True``, bf16, the same LoRA / full setup),
timed by a callback, for a side-by-side number. (On CPU the 2-process TRL smoke run fails inside
accelerate's DDP setup over gloo; the sso rows run on 1 and 2 CPU processes.)

GPU:        python bench/gpu_dpo_scale.py --models 1b,8b --modes lora,full --gpus 1,2 --trl
8 GPUs:     python bench/gpu_dpo_scale.py --models 8b --modes lora,full --gpus 1,8 --grad-ckpt
8B full:    python bench/gpu_dpo_scale.py --models 8b --modes full --gpus 8 --grad-ckpt --strategy fsdp   # or zero3
CPU smoke:  python bench/gpu_dpo_scale.py --device cpu --models tiny --gpus 1,2 --steps 1 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from gpu_train_mfu import SHAPES, count_params, peak_tflops, time_optimizer_steps  # noqa: E402  (same shapes, peaks, timing)


def build_model(shape: str, mode: str, device, grad_ckpt: bool, lora_r: int, master_fp32: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, rope_theta=500000.0,
                         attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        bf16 = device.type == "cuda" and not master_fp32        # fsdp: float32 master weights, bf16 compute
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if bf16 else torch.float32)
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
    return model, config


def step_flops(config, mode: str, n_seqs: int, seq_len: int, scored: int) -> float:
    body, head = count_params(config)
    per_param = 6 if mode == "full" else 4          # LoRA: no weight gradients of the frozen base
    attn = 3 * 2 * config.num_hidden_layers * seq_len * seq_len * config.hidden_size * n_seqs
    return float(per_param * body * n_seqs * seq_len + per_param * head * n_seqs * scored + attn)


def worker(args) -> None:
    import torch

    from sso.config import LoraConfig, ModelConfig, TrainConfig
    from sso.training.distributed import dist_info, init_distributed, teardown, wrap_for_training
    from sso.training.memory import estimate_training_memory
    from sso.training.objectives import DPO_OBJECTIVE
    from sso.training.trainer import TrainRun, make_optimizer

    info = init_distributed()
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    model, config = build_model(args.model, args.mode, device, args.grad_ckpt, args.lora_r, args.strategy == "fsdp")
    n = args.pairs_per_gpu * info.world_size
    gen = torch.Generator().manual_seed(0)
    ids = lambda k: torch.randint(10, config.vocab_size, (k,), generator=gen).tolist()  # noqa: E731
    encoded = [[(ids(args.prompt_len), ids(args.response_len)) for _ in range(n)] for _ in range(2)]
    cfg = TrainConfig(learning_rate=1e-6, batch_size=n, warmup_ratio=0.0, finetuning=args.mode,
                      gradient_checkpointing=args.grad_ckpt, lora=LoraConfig(r=args.lora_r), strategy=args.strategy)
    run = TrainRun(model=model, objective=DPO_OBJECTIVE, cfg=cfg, encoded=encoded, ref_logps=torch.zeros(2, n),
                   max_length=args.prompt_len + args.response_len, pad_id=0, dist=dist_info())
    run.ddp, opt, sched = wrap_for_training(model, run.dist, lambda: make_optimizer(model, cfg, args.warmup + args.steps),
                                            args.strategy, "bfloat16", cfg.max_grad_norm)
    dt = time_optimizer_steps(run, opt, sched, n, args.warmup, args.steps, device)
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    peak_mem = _max_over_ranks(peak_mem)
    seq_len = args.prompt_len + args.response_len
    flops = step_flops(config, args.mode, 2 * n, seq_len, args.response_len)
    peak = peak_tflops(device, args.peak_tflops)
    est = estimate_training_memory(config, cfg, ModelConfig(dtype="bfloat16", max_length=seq_len), info.world_size)
    if info.is_main:
        _emit(args, {"impl": "sso", "model": args.model, "mode": args.mode, "strategy": args.strategy,
                     "gpus": info.world_size,
                     "grad_ckpt": args.grad_ckpt, "pairs_per_step": n, "seq_len": seq_len, "step_s": dt,
                     "tokens_per_s": 2 * n * seq_len / dt, "peak_mem_gib": peak_mem,
                     "estimate_gib": est["total"] / 2**30,
                     "mfu": flops / dt / (peak * 1e12 * info.world_size) if peak else None})
    teardown()


def _max_over_ranks(value: float) -> float:
    import torch
    import torch.distributed as dist

    from sso.training.distributed import dist_info

    if not dist_info().active:
        return value
    t = torch.tensor([value], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _emit(args, row: dict) -> None:
    print("RESULT " + json.dumps(row), flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "results.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")


def trl_worker(args) -> None:
    """TRL's DPOTrainer on random words of about the same length (sso-tiny's offline tokenizer)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from sso.models.loading import load_tokenizer
    from sso.models.tiny import ensure_tiny_model

    tok = load_tokenizer(str(ensure_tiny_model()))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model, config = build_model(args.model, "full", device, False, args.lora_r)   # TRL applies LoRA itself
    words = lambda n, s: " ".join(f"w{(s * 7919 + i * 104729) % 3000}" for i in range(n))  # noqa: E731
    rows = 8 * args.pairs_per_gpu * (args.warmup + args.steps)
    ds = Dataset.from_dict({"prompt": [words(args.prompt_len // 2, i) for i in range(rows)],
                            "chosen": [words(args.response_len // 2, i + 1) for i in range(rows)],
                            "rejected": [words(args.response_len // 2, i + 2) for i in range(rows)]})
    # an on-disk copy per rank: TRL's tokenising map caches next to the data, not in a per-process temp dir
    from datasets import load_from_disk

    data_dir = os.path.join(args.out or "/tmp", f"sso-trl-data-rank{os.environ.get('RANK', '0')}")
    ds.save_to_disk(data_dir)
    ds = load_from_disk(data_dir)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            torch.cuda.synchronize() if device.type == "cuda" else None
            times.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            torch.cuda.synchronize() if device.type == "cuda" else None
            times[-1] = time.perf_counter() - times[-1]

    peft_config = None
    if args.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    dpo_args = DPOConfig(output_dir=os.path.join(args.out or "/tmp", "trl"), per_device_train_batch_size=args.pairs_per_gpu,
                         max_length=args.prompt_len + args.response_len, max_steps=args.warmup + args.steps,
                         precompute_ref_log_probs=True, bf16=device.type == "cuda", use_cpu=device.type != "cuda",
                         gradient_checkpointing=args.grad_ckpt, learning_rate=1e-6, report_to="none",
                         save_strategy="no", disable_tqdm=True, logging_steps=10**6)
    trainer = DPOTrainer(model=model, args=dpo_args, train_dataset=ds, processing_class=tok,
                         peft_config=peft_config, callbacks=[Timer()])
    trainer.train()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dt = sum(times[args.warmup:]) / max(1, len(times[args.warmup:]))
    seq_len = args.prompt_len + args.response_len   # approximate: TRL pads to the longest in the batch
    if int(os.environ.get("RANK", "0")) == 0:
        _emit(args, {"impl": "trl", "model": args.model, "mode": args.mode, "gpus": world, "grad_ckpt": args.grad_ckpt,
                     "pairs_per_step": args.pairs_per_gpu * world, "seq_len": seq_len, "step_s": dt,
                     "tokens_per_s": 2 * args.pairs_per_gpu * world * seq_len / dt,
                     "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0})


def drive(args, passthrough: list[str]) -> None:
    from sso.training.distributed import torchrun_command

    impls = ["sso"] + (["trl"] if args.trl and _has_trl() else [])
    port = 29600
    for shape in args.models.split(","):
        for mode in args.modes.split(","):
            for gpus in (int(g) for g in args.gpus.split(",")):
                for impl in impls:
                    port += 1
                    cmd = torchrun_command(gpus, ["--worker", impl, "--model", shape, "--mode", mode, *passthrough],
                                           module="__main__", master_port=port)
                    cmd[cmd.index("-m", 3): cmd.index("-m", 3) + 2] = [str(Path(__file__).resolve())]
                    print("$", " ".join(cmd), flush=True)
                    proc = subprocess.run(cmd, text=True, capture_output=True, timeout=args.timeout_s)
                    if proc.returncode != 0:
                        print(f"FAILED ({shape} {mode} {gpus} GPU {impl}):\n{(proc.stdout + proc.stderr)[-3000:]}")
                    for line in proc.stdout.splitlines():
                        if line.startswith("RESULT "):
                            print(line[7:], flush=True)


def _has_trl() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["sso", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--model", default="1b", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="lora", help=argparse.SUPPRESS)
    p.add_argument("--models", default="1b,8b")
    p.add_argument("--modes", default="lora,full")
    p.add_argument("--gpus", default="1,2", help="comma list of GPU counts (torchrun --nproc_per_node)")
    p.add_argument("--trl", action="store_true", help="also run TRL's DPOTrainer when trl is importable")
    p.add_argument("--device", default="cuda")
    p.add_argument("--pairs-per-gpu", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--response-len", type=int, default=768)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp", "zero2", "zero3"],
                   help="sso rows: ddp, fsdp (FSDP2) or zero2 / zero3 (DeepSpeed)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="directory for results.jsonl")
    args, _ = p.parse_known_args(argv)
    if args.worker == "sso":
        return worker(args)
    if args.worker == "trl":
        return trl_worker(args)
    keep = ["--device", args.device, "--pairs-per-gpu", str(args.pairs_per_gpu), "--prompt-len", str(args.prompt_len),
            "--response-len", str(args.response_len), "--lora-r", str(args.lora_r), "--warmup", str(args.warmup),
            "--steps", str(args.steps), "--out", args.out, "--strategy", args.strategy] \
        + (["--grad-ckpt"] if args.grad_ckpt else []) \
        + (["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else [])
    drive(args, keep)


if __name__ == "__main__":
    main()

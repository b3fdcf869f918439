"""LoRA DPO and SSO optimizer steps on randomly initialised Llama-shaped models: tokens/s, memory, MFU.

No weights are downloaded: a ``LlamaConfig`` of the 1B (Llama-3.2-1B) or 8B (Llama-3-8B) shape is
instantiated directly on the device in bf16 (speed does not depend on the weight values). Each
step goes through the real training code (:func:`sso.training.trainer.optimizer_step`: one forward pass
over all sequences of the micro-batch, bf16 autocast on CUDA, precomputed reference log-probs,
AdamW on the LoRA parameters, clipping), on fixed-length random token sequences.

Reported per (model, objective): step time, tokens/s, peak allocated memory, model FLOPs per
step and MFU against the GPU's dense bf16 peak. Model FLOPs are what the step needs, not what
the hardware ran: frozen base weights need no weight gradients, so a LoRA step costs about
``4 N`` FLOPs per token (forward + input gradients) plus attention, the LM head on the scored
positions and the LoRA matmuls; ``mfu_6n`` also reports the usual ``6 N`` full-fine-tuning
convention for comparison. Recomputation from gradient checkpointing is not counted.

GPU:       python bench/gpu_train_mfu.py --models 1b,8b
CPU smoke: python bench/gpu_train_mfu.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHAPES = {
    # Llama-3.2-1B
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    # Llama-3-8B
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    # the sso-tiny shape, for the CPU smoke run
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True),
}

#: dense bf16 peak TFLOP/s by device-name substring (first match wins)
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("H800", 989.4),
                    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0),
                    ("B200", 2250.0), ("GB200", 2500.0))

#: sequences per example: DPO (chosen, rejected), SSO (y+|x+, y-|x+, y_o|x-, y+|x-)
OBJECTIVES = {"dpo": 2, "sso": 4}

#: sequences per optimizer step by shape (so DPO and SSO steps see the same token count; an 8B step
#: of 8 x 1024 tokens fits an 80-141 GiB GPU without gradient checkpointing)
DEFAULT_SEQS = {"1b": 16, "8b": 8, "tiny": 8}


def build_model(shape: str, device, lora_targets: tuple[str, ...], r: int, grad_ckpt: bool):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, rope_theta=500000.0,
                         attn_implementation="sdpa", use_cache=False)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(lora_targets),
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora), config


def make_run(model, objective: str, n_examples: int, prompt_len: int, response_len: int, vocab: int):
    """A trainer ``TrainRun`` over random fixed-length sequences (reference log-probs: zeros)."""
    import torch

    from sso.config import TrainConfig
    from sso.training.objectives import DPO_OBJECTIVE, SSO_OBJECTIVE
    from sso.training.trainer import TrainRun

    gen = torch.Generator().manual_seed(0)
    k = OBJECTIVES[objective]

    def ids(n):
        return torch.randint(10, vocab, (n,), generator=gen).tolist()

    encoded = [[(ids(prompt_len), ids(response_len)) for _ in range(n_examples)] for _ in range(k)]
    cfg = TrainConfig(learning_rate=1e-5, batch_size=n_examples, warmup_ratio=0.0)
    return TrainRun(model=model, objective={"dpo": DPO_OBJECTIVE, "sso": SSO_OBJECTIVE}[objective], cfg=cfg, encoded=encoded,
                ref_logps=torch.zeros(k, n_examples), max_length=prompt_len + response_len, pad_id=0), cfg


def count_params(config) -> tuple[int, int]:
    """(decoder matmul parameters per token, LM-head parameters)."""
    d, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    hd = d // config.num_attention_heads
    attn = d * d + 2 * d * (config.num_key_value_heads * hd) + d * d   # q, k, v, o
    mlp = 3 * d * f
    return L * (attn + mlp), config.vocab_size * d


def lora_flops_per_token(model) -> int:
    """Forward + backward (input and weight grads) FLOPs of all LoRA matmuls, per token."""
    total = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            total += 2 * p.numel() * 3      # fwd 2*params, bwd ~2x fwd
    return total


def step_flops(config, model, n_seqs: int, seq_len: int, scored: int) -> tuple[float, float]:
    """(LoRA model FLOPs, 6N-convention FLOPs) of one optimizer step."""
    body, head = count_params(config)
    tokens = n_seqs * seq_len
    L, d = config.num_hidden_layers, config.hidden_size
    attn_fwd = 2 * L * seq_len * seq_len * d * n_seqs          # QK^T and AV, causal half
    head_tokens = n_seqs * scored                               # logits only on scored positions
    lora = lora_flops_per_token(model) * tokens
    needed = 4 * body * tokens + 4 * head * head_tokens + 3 * attn_fwd + lora
    six_n = 6 * body * tokens + 6 * head * head_tokens + 3 * attn_fwd
    return float(needed), float(six_n)


def peak_tflops(device, override: float | None) -> float | None:
    import torch

    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    return None


def time_optimizer_steps(run, opt, sched, n: int, warmup: int, steps: int, device) -> float:
    """Seconds per optimizer step over rows ``0..n-1`` after ``warmup`` untimed steps (CUDA:
    synchronised; the peak-memory counter is reset after the warm-up)."""
    import torch

    from sso.training.trainer import optimizer_step

    run.model.train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        optimizer_step(run, opt, sched, [list(range(n))])
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        optimizer_step(run, opt, sched, [list(range(n))])
    sync()
    return (time.perf_counter() - t0) / steps


def bench_one(model, config, shape: str, objective: str, args, device) -> dict:
    import torch

    from sso.training.trainer import make_optimizer

    n = args.examples or max(1, DEFAULT_SEQS[shape] // OBJECTIVES[objective])
    run, cfg = make_run(model, objective, n, args.prompt_len, args.response_len, config.vocab_size)
    opt, sched = make_optimizer(model, cfg, total_steps=args.warmup + args.steps)
    dt = time_optimizer_steps(run, opt, sched, n, args.warmup, args.steps, device)
    n_seqs, seq_len = n * OBJECTIVES[objective], args.prompt_len + args.response_len
    needed, six_n = step_flops(config, model, n_seqs, seq_len, args.response_len)
    peak = peak_tflops(device, args.peak_tflops)
    return {
        "objective": objective, "examples": n, "sequences": n_seqs, "seq_len": seq_len,
        "step_s": dt, "tokens_per_s": n_seqs * seq_len / dt,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "model_tflops_per_step": needed / 1e12,
        "mfu": needed / dt / (peak * 1e12) if peak else None,
        "mfu_6n": six_n / dt / (peak * 1e12) if peak else None,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="1b,8b", help="comma list of: " + ", ".join(SHAPES))
    parser.add_argument("--tiny", action="store_true", help="smoke run: the tiny shape, short sequences")
    parser.add_argument("--objectives", default="dpo,sso")
    parser.add_argument("--examples", type=int, default=0,
                        help="pairs (DPO) / triples (SSO) per step; 0: the shape's sequences per step "
                             f"{DEFAULT_SEQS} divided by the sequences per example")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--response-len", type=int, default=768)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    parser.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (less memory)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the bf16 peak")
    parser.add_argument("--out", default=os.environ.get("OUT", ""), help="directory for results.jsonl")
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.prompt_len, args.response_len = "tiny", 32, 32
        args.warmup, args.steps = 1, 2

    import torch

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        peak = peak_tflops(device, args.peak_tflops)
        print(f"device: {torch.cuda.get_device_name(device)}, dense bf16 peak {peak} TFLOP/s")
    results = []
    for shape in args.models.split(","):
        model, config = build_model(shape, device, tuple(args.lora_targets.split(",")), args.lora_r,
                                    args.grad_ckpt)
        for objective in args.objectives.split(","):
            try:
                res = {"model": shape, "grad_ckpt": args.grad_ckpt,
                       **bench_one(model, config, shape, objective, args, device)}
            except torch.OutOfMemoryError as exc:
                res = {"model": shape, "objective": objective, "error": f"out of memory: {exc}"[:200]}
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
            results.append(res)
            print(json.dumps(res), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "results.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in results)
    print(f"{'model':<6}{'obj':<5}{'step s':>8}{'tok/s':>10}{'mem GiB':>9}{'MFU':>7}{'MFU6N':>7}")
    for r in results:
        if "error" in r:
            print(f"{r['model']:<6}{r['objective']:<5} {r['error']}")
            continue
        fmt = lambda v, f: format(v, f) if v is not None else "-"   # noqa: E731
        print(f"{r['model']:<6}{r['objective']:<5}{r['step_s']:>8.3f}{r['tokens_per_s']:>10.0f}"
              f"{fmt(r['peak_mem_gib'], '>9.1f'):>9}{fmt(r['mfu'], '>7.1%'):>7}{fmt(r['mfu_6n'], '>7.1%'):>7}")


if __name__ == "__main__":
    main()

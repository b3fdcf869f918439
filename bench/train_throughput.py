"""Optimizer steps/s of our DPO trainer vs TRL's DPOTrainer, and the cost of an SSO step.

Same tiny model (``sso-tiny``, built offline), same data, same batch size, same LoRA (r=8,
alpha=16, q/k/v/o), float32 on CPU. The data are SSO triples of the shipped queries with
catalogue principles as system messages and random-word answers; the DPO pairs are their x+ pairs
``(x+, y+, y-)`` (the PBAA pair, i.e. the L+ term of SSO), so a DPO step and an SSO step read the
same kind of sequences and the SSO step has exactly twice as many (``--dpo-prompt plain`` uses the
principle-free prompt instead; its sequences are much shorter).

- ``ours_dpo``    :func:`sso.training.trainer.train_dpo`;
- ``trl_dpo``     ``trl.DPOTrainer`` with its defaults (a reference forward every step);
- ``trl_dpo_pre`` ``trl.DPOTrainer`` with ``precompute_ref_log_probs=True`` (for comparison);
- ``ours_sso``    :func:`sso.training.trainer.train_sso` on the triples;
- ``ours_dpo_x2`` :func:`sso.training.trainer.train_dpo` with twice the pairs per step (as many sequences per
  forward pass as an SSO step: separates the cost of the SSO objective from that of a bigger batch).

Steps/s = 1 / median optimizer-step time, measured inside the training loop (model loading,
tokenisation and reference precomputation excluded for every contender; the first step of each run
is dropped as warm-up), over ``--repeats`` interleaved runs: the median keeps the figure stable on
a CPU shared with other jobs. The last line reads
``dpo_vs_trl=<ours_dpo / trl_dpo> sso_vs_dpo_cost=<ours_dpo / ours_sso>`` (goals >= 1.3, <= 2.2).

Usage: ``python bench/train_throughput.py [--examples 64] [--batch-size 8] [--steps 16]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_data(tokenizer, n: int, response_words: int, seed: int, dpo_prompt: str = "x_plus"):
    """(pairs, triples) for the first ``n`` shipped queries; responses are random words."""
    import pandas as pd
    import pydoc_data.topics

    from sso.generation.chat import render_prompt
    from sso.data.principles import build_catalogue_principles

    lines = (ROOT / "sso" / "data" / "queries.jsonl").read_text().splitlines()
    queries = pd.DataFrame([json.loads(line) for line in lines[:n]]).rename(columns={"id": "query_id"})
    principles = build_catalogue_principles(queries, seed=seed)
    vocab = sorted(set(" ".join(pydoc_data.topics.topics.values()).split()))[:5000]
    rng = random.Random(seed)

    def answer() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(response_words // 2, response_words)))

    triples = pd.DataFrame({
        "query_id": queries["query_id"],
        "prompt_text": [render_prompt(tokenizer, q) for q in queries["prompt"]],
        "x_plus": [render_prompt(tokenizer, q, p) for q, p in zip(queries["prompt"], principles["good_principle"])],
        "x_minus": [render_prompt(tokenizer, q, p) for q, p in zip(queries["prompt"], principles["bad_principle"])],
        "y_plus": [answer() for _ in range(n)], "y_minus": [answer() for _ in range(n)],
        "y_o": [answer() for _ in range(n)],
    })
    prompt_col = {"x_plus": "x_plus", "plain": "prompt_text"}[dpo_prompt]
    pairs = pd.DataFrame({"query_id": triples["query_id"], "prompt_text": triples[prompt_col],
                          "chosen": triples["y_plus"], "rejected": triples["y_minus"]})
    return pairs, triples


def train_cfg(args, batch_size: int | None = None):
    from sso.config import TrainConfig

    batch_size = batch_size or args.batch_size
    epochs = math.ceil(args.steps / math.ceil(args.examples / batch_size))
    return TrainConfig(learning_rate=1e-3, epochs=epochs, max_steps=args.steps, batch_size=batch_size,
                       warmup_ratio=0.1, log_every=1)


def run_ours(kind: str, model_path: str, table, args, batch_size: int | None = None) -> dict:
    from sso.config import ModelConfig
    from sso.training.trainer import train_dpo, train_sso

    fn = train_dpo if kind == "dpo" else train_sso
    ends: list[float] = []
    t0 = time.perf_counter()
    res = fn(model_path, table, train_cfg(args, batch_size), ModelConfig(dtype="float32", device="cpu",
                                                             max_length=args.max_length),
             seed=0, progress=False, on_log=lambda row: ends.append(time.perf_counter()))
    s = res.summary
    return {"step_times": [b - a for a, b in zip(ends, ends[1:])], "tokens_per_step": s["tokens"] / s["steps"],
            "wall_s": time.perf_counter() - t0}


def run_trl(model_path: str, pairs, args, *, precompute: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from sso.models.loading import load_model, load_tokenizer

    class Clock(TrainerCallback):
        ends: list[float] = []

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

    t0 = time.perf_counter()
    ds = Dataset.from_dict({"prompt": list(pairs["prompt_text"]), "chosen": list(pairs["chosen"]),
                            "rejected": list(pairs["rejected"])})
    cfg = train_cfg(args)
    with tempfile.TemporaryDirectory() as out:
        dpo_args = DPOConfig(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio,
            beta=cfg.beta, max_length=args.max_length, logging_steps=1, save_strategy="no",
            report_to="none", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
            precompute_ref_log_probs=precompute, seed=0)
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=load_model(model_path, dtype="float32", device="cpu"), args=dpo_args,
                             train_dataset=ds, processing_class=load_tokenizer(model_path), peft_config=lora)
        clock = Clock()
        trainer.add_callback(clock)
        trainer.remove_callback(PrinterCallback)     # no per-step log dicts on stdout
        trainer.train()
    ends = clock.ends
    return {"step_times": [b - a for a, b in zip(ends, ends[1:])], "tokens_per_step": float("nan"),
            "wall_s": time.perf_counter() - t0}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--response-words", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on shared CPUs)")
    parser.add_argument("--dpo-prompt", choices=("x_plus", "plain"), default="x_plus",
                        help="prompt of the DPO pairs: x+ (same sequences as SSO's L+ pair) or the plain query")
    args = parser.parse_args(argv)

    import torch
    import transformers

    from sso.models.loading import load_tokenizer
    from sso.models.tiny import ensure_tiny_model

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    model_path = str(ensure_tiny_model())
    pairs, triples = build_data(load_tokenizer(model_path), args.examples, args.response_words, seed=0,
                                dpo_prompt=args.dpo_prompt)

    contenders = {
        "ours_dpo": lambda: run_ours("dpo", model_path, pairs, args),
        "trl_dpo": lambda: run_trl(model_path, pairs, args, precompute=False),
        "trl_dpo_pre": lambda: run_trl(model_path, pairs, args, precompute=True),
        "ours_sso": lambda: run_ours("sso", model_path, triples, args),
        # DPO with twice the pairs per step: as many sequences per forward pass as the SSO step
        "ours_dpo_x2": lambda: run_ours("dpo", model_path, pairs, args, batch_size=2 * args.batch_size),
    }
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            runs[name].append(fn())
    rate = {name: 1.0 / statistics.median(t for r in rs for t in r["step_times"]) for name, rs in runs.items()}

    print(f"tiny model, {args.examples} examples, batch {args.batch_size}, {args.steps} optimizer steps, "
          f"DPO prompt {args.dpo_prompt}, {args.threads} thread(s), {args.repeats} run(s) each")
    print(f"{'contender':<12} {'steps/s':>9} {'tokens/step':>12} {'wall s/run':>11}")
    for name, rs in runs.items():
        wall = statistics.mean(r["wall_s"] for r in rs)
        print(f"{name:<12} {rate[name]:>9.2f} {rs[0]['tokens_per_step']:>12.0f} {wall:>11.1f}")
    dpo_vs_trl = rate["ours_dpo"] / rate["trl_dpo"]
    dpo_vs_trl_pre = rate["ours_dpo"] / rate["trl_dpo_pre"]
    sso_cost = rate["ours_dpo"] / rate["ours_sso"]
    tok_ratio = runs["ours_sso"][0]["tokens_per_step"] / runs["ours_dpo"][0]["tokens_per_step"]
    print(f"ours_dpo / trl_dpo_pre (TRL with precomputed references) = {dpo_vs_trl_pre:.2f}")
    print(f"SSO step reads {tok_ratio:.2f}x the tokens of a DPO step; SSO step / DPO step with twice the "
          f"pairs (same sequence count) = {rate['ours_dpo_x2'] / rate['ours_sso']:.2f}")
    print(f"dpo_vs_trl={dpo_vs_trl:.2f} sso_vs_dpo_cost={sso_cost:.2f}")


if __name__ == "__main__":
    main()

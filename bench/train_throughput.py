"""Optimizer steps/s and peak memory of our DPO trainer vs TRL's DPOTrainer, and the cost of an SSO step.

Same model, same data, same batch size, same LoRA (r=8, alpha=16, q/k/v/o), float32 on CPU. The
data are SSO triples of the shipped queries with principles (``--principles``: catalogue system
messages for sso-tiny, short verifiable rules in the user turn for a real model, as in
configs/smollm2-cpu.toml) and random-word answers; the DPO pairs are their x+ pairs
``(x+, y+, y-)`` (the PBAA pair, i.e. the L+ term of SSO), so a DPO step and an SSO step read the
same kind of sequences and the SSO step has exactly twice as many (``--dpo-prompt plain`` uses the
principle-free prompt instead).

- ``ours_dpo``    :func:`sso.training.trainer.train_dpo`;
- ``trl_dpo``     ``trl.DPOTrainer`` in the same settings as ours: float32 (``bf16=False``), no
  gradient checkpointing; otherwise its defaults (a reference forward every step);
- ``trl_dpo_pre`` the same with ``precompute_ref_log_probs=True`` (for comparison);
- ``trl_dpo_defaults`` ``trl.DPOTrainer`` with TRL 1.x's own defaults, which on CPU mean bf16
  autocast and gradient checkpointing (less memory, different numerics: for reference only);
- ``ours_sso``    :func:`sso.training.trainer.train_sso` on the triples;
- ``ours_dpo_x2`` :func:`sso.training.trainer.train_dpo` with twice the pairs per step (as many
  sequences per forward pass as an SSO step: separates the cost of the SSO objective from that of
  a bigger batch).

What is measured:

- steps/s = 1 / median optimizer-step time, timed inside the training loop (model loading,
  tokenisation and reference precomputation excluded for every contender; the first step of each
  run is dropped as warm-up), pooled over ``--repeats`` interleaved runs;
- peak RSS = the resident-set high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``) of a fresh
  child process that runs exactly one contender; ``base`` is the same figure just before the run
  starts (Python + torch + transformers [+ trl] imported, no model loaded yet). Every contender
  runs in its own child, so no run inherits another's allocations.

The last line reads ``dpo_vs_trl=<ours_dpo / trl_dpo steps/s> sso_vs_dpo_cost=<SSO step time /
DPO step time>`` (goals >= 1.3 and <= 2.2).

Usage::

    python bench/train_throughput.py                                  # sso-tiny preset
    python bench/train_throughput.py --model smollm2-135m-instruct    # real-model preset (~10 min)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONTENDERS = ("ours_dpo", "trl_dpo", "trl_dpo_pre", "trl_dpo_defaults", "ours_sso", "ours_dpo_x2")

#: settings per model kind (any of them can be overridden on the command line). The real preset
#: mirrors configs/smollm2-cpu.toml (verifiable principles in the user turn, ~70-token prompts) with
#: ~100-token answers (40 words at most), batch 4 (an SSO step at batch 8 peaks at ~14 GiB RSS)
#: and the three contenders the headline ratios need, to fit ~10 minutes on 2 busy cores.
PRESETS = {
    "tiny": {"examples": 64, "batch_size": 8, "steps": 12, "response_words": 24, "repeats": 2,
             "principles": "catalogue", "placement": "system", "contenders": ",".join(CONTENDERS)},
    "real": {"examples": 16, "batch_size": 4, "steps": 4, "response_words": 40, "repeats": 1,
             "principles": "verifiable", "placement": "user", "contenders": "ours_dpo,trl_dpo,ours_sso"},
}
INT_OPTIONS = ("examples", "batch_size", "steps", "response_words", "repeats")


def build_data(tokenizer, n: int, response_words: int, seed: int, dpo_prompt: str = "x_plus", *,
               principles: str = "catalogue", placement: str = "system"):
    """(pairs, triples) DataFrames for the first ``n`` shipped queries; answers are random words
    (``response_words // 2`` to ``response_words`` words each, from a fixed 5000-word vocabulary).

    ``principles``: ``catalogue`` (feature-catalogue system messages, ~120 tokens) or ``verifiable``
    (short rule-checkable instructions); ``placement``: ``system`` or ``user``
    (:func:`sso.generation.chat.render_prompt`).
    """
    import pandas as pd
    import pydoc_data.topics

    from sso.data.principles import build_catalogue_principles
    from sso.data.verifiable import build_verifiable_principles
    from sso.generation.chat import render_prompt

    if n < 1 or response_words < 2:
        raise ValueError(f"need n >= 1 and response_words >= 2, got n={n}, response_words={response_words}")
    lines = [ln for ln in (ROOT / "sso" / "data" / "queries.jsonl").read_text().splitlines() if ln.strip()]
    queries = pd.DataFrame([json.loads(line) for line in lines[:n]]).rename(columns={"id": "query_id"})
    build = {"catalogue": build_catalogue_principles, "verifiable": build_verifiable_principles}
    if principles not in build:
        raise ValueError(f"principles must be one of {sorted(build)}, got {principles!r}")
    table = build[principles](queries, seed=seed)
    vocab = sorted(set(" ".join(pydoc_data.topics.topics.values()).split()))[:5000]
    rng = random.Random(seed)

    def answer() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(response_words // 2, response_words)))

    qs = list(queries["prompt"])

    def steered(column: str) -> list[str]:
        return [render_prompt(tokenizer, q, p, placement=placement) for q, p in zip(qs, table[column])]

    triples = pd.DataFrame({
        "query_id": queries["query_id"],
        "prompt_text": [render_prompt(tokenizer, q) for q in qs],
        "x_plus": steered("good_principle"), "x_minus": steered("bad_principle"),
        "y_plus": [answer() for _ in qs], "y_minus": [answer() for _ in qs], "y_o": [answer() for _ in qs],
    })
    prompt_col = {"x_plus": "x_plus", "plain": "prompt_text"}[dpo_prompt]
    pairs = pd.DataFrame({"query_id": triples["query_id"], "prompt_text": triples[prompt_col],
                          "chosen": triples["y_plus"], "rejected": triples["y_minus"]})
    return pairs, triples


def train_cfg(args, batch_size: int | None = None):
    """The shared :class:`~sso.config.TrainConfig` (epochs enough for ``args.steps`` steps)."""
    from sso.config import TrainConfig

    batch_size = batch_size or args.batch_size
    epochs = math.ceil(args.steps / math.ceil(args.examples / batch_size))
    return TrainConfig(learning_rate=1e-3, epochs=epochs, max_steps=args.steps, batch_size=batch_size,
                       warmup_ratio=0.1, log_every=1)


def run_ours(kind: str, model_path: str, table, args, batch_size: int | None = None) -> dict:
    """One run of our trainer: step times (s, first step dropped), tokens/step, wall time (s)."""
    from sso.config import ModelConfig
    from sso.training.trainer import train_dpo, train_sso

    fn = train_dpo if kind == "dpo" else train_sso
    ends: list[float] = []
    t0 = time.perf_counter()
    res = fn(model_path, table, train_cfg(args, batch_size),
             ModelConfig(dtype="float32", device="cpu", max_length=args.max_length),
             seed=0, progress=False, on_log=lambda row: ends.append(time.perf_counter()))
    s = res.summary
    return {"step_times": [b - a for a, b in zip(ends, ends[1:])], "tokens_per_step": s["tokens"] / s["steps"],
            "wall_s": time.perf_counter() - t0}


def run_trl(model_path: str, pairs, args, *, precompute: bool, same_settings: bool = True) -> dict:
    """One run of ``trl.DPOTrainer`` with the same LoRA, learning rate, schedule and beta.

    ``same_settings``: float32 and no gradient checkpointing, as ours; False keeps TRL's defaults
    for both (bf16 autocast and gradient checkpointing in TRL 1.x).
    """
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from sso.models.loading import load_model, load_tokenizer

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

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
            precompute_ref_log_probs=precompute, seed=0,
            **({"bf16": False, "gradient_checkpointing": False} if same_settings else {}))
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=load_model(model_path, dtype="float32", device="cpu"), args=dpo_args,
                             train_dataset=ds, processing_class=load_tokenizer(model_path), peft_config=lora)
        trainer.add_callback(Clock())
        trainer.remove_callback(PrinterCallback)     # no per-step log dicts on stdout
        trainer.train()
    return {"step_times": [b - a for a, b in zip(ends, ends[1:])], "tokens_per_step": float("nan"),
            "wall_s": time.perf_counter() - t0}


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark so far, in MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(args) -> None:
    """Child mode: run one contender on the pickled tables, write its figures as JSON."""
    import pandas as pd
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    name = args.child
    if name.startswith("trl"):
        import trl  # noqa: F401  (imported before the baseline so "base" counts it for TRL runs)
    pairs = pd.read_pickle(Path(args.data) / "pairs.pkl")
    triples = pd.read_pickle(Path(args.data) / "triples.pkl")
    base = peak_rss_mb()
    runners = {
        "ours_dpo": lambda: run_ours("dpo", args.model, pairs, args),
        "trl_dpo": lambda: run_trl(args.model, pairs, args, precompute=False),
        "trl_dpo_pre": lambda: run_trl(args.model, pairs, args, precompute=True),
        "trl_dpo_defaults": lambda: run_trl(args.model, pairs, args, precompute=False, same_settings=False),
        "ours_sso": lambda: run_ours("sso", args.model, triples, args),
        "ours_dpo_x2": lambda: run_ours("dpo", args.model, pairs, args, batch_size=2 * args.batch_size),
    }
    res = runners[name]()
    res.update(base_rss_mb=base, peak_rss_mb=peak_rss_mb())
    Path(args.result).write_text(json.dumps(res))


def spawn(name: str, args, data_dir: str) -> dict:
    """Run contender ``name`` in a fresh interpreter; its figures (ValueError with its stderr on failure)."""
    result = Path(data_dir) / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--data", data_dir,
           "--result", str(result), "--model", args.model]
    for key in ("examples", "batch_size", "steps", "response_words", "max_length", "threads"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"contender {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(result.read_text())
    result.unlink()
    return out


def report(runs: dict[str, list[dict]], args, model_label: str) -> None:
    """Print the per-contender table and the ratio lines."""
    rate = {n: 1.0 / statistics.median(t for r in rs for t in r["step_times"]) for n, rs in runs.items()}
    n_timed = {n: sum(len(r["step_times"]) for r in rs) for n, rs in runs.items()}
    print(f"model {model_label}, {args.examples} examples, batch {args.batch_size}, {args.steps} optimizer "
          f"steps, answers {args.response_words // 2}-{args.response_words} words, {args.principles} "
          f"principles ({args.placement} placement), DPO prompt {args.dpo_prompt}, {args.threads} "
          f"thread(s), {args.repeats} run(s) each, float32 CPU")
    print(f"{'contender':<16} {'steps/s':>8} {'s/step':>7} {'timed':>5} {'tokens/step':>11} "
          f"{'peak RSS MiB':>12} {'base MiB':>8} {'wall s/run':>10}")
    for name, rs in runs.items():
        wall = statistics.mean(r["wall_s"] for r in rs)
        peak = max(r["peak_rss_mb"] for r in rs)
        base = max(r["base_rss_mb"] for r in rs)
        tok = rs[0]["tokens_per_step"]
        tok_s = "-" if math.isnan(tok) else f"{tok:.0f}"
        print(f"{name:<16} {rate[name]:>8.3f} {1 / rate[name]:>7.2f} {n_timed[name]:>5} {tok_s:>11} "
              f"{peak:>12.0f} {base:>8.0f} {wall:>10.1f}")
    notes = {"trl_dpo_pre": "TRL with precomputed references",
             "trl_dpo_defaults": "TRL's own defaults: bf16 autocast + gradient checkpointing"}
    for other, what in notes.items():
        if {other, "ours_dpo"} <= rate.keys():
            print(f"ours_dpo / {other} ({what}) = {rate['ours_dpo'] / rate[other]:.2f}")
    if {"ours_sso", "ours_dpo", "ours_dpo_x2"} <= rate.keys():
        tok_ratio = runs["ours_sso"][0]["tokens_per_step"] / runs["ours_dpo"][0]["tokens_per_step"]
        print(f"SSO step reads {tok_ratio:.2f}x the tokens of a DPO step; SSO step / DPO step with twice the "
              f"pairs (same sequence count) = {rate['ours_dpo_x2'] / rate['ours_sso']:.2f}")
    if {"trl_dpo", "ours_dpo"} <= rate.keys():
        peak = {n: max(r["peak_rss_mb"] for r in runs[n]) for n in ("ours_dpo", "trl_dpo")}
        print(f"peak RSS trl_dpo / ours_dpo = {peak['trl_dpo'] / peak['ours_dpo']:.2f}")
    fmt = lambda a, b: f"{rate[a] / rate[b]:.2f}" if {a, b} <= rate.keys() else "n/a"  # noqa: E731
    print(f"dpo_vs_trl={fmt('ours_dpo', 'trl_dpo')} sso_vs_dpo_cost={fmt('ours_dpo', 'ours_sso')}")


def parse_args(argv=None):
    """Command-line options; sizes left unset take the ``tiny`` or ``real`` preset of :data:`PRESETS`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sso-tiny", help="sso-tiny, smollm2-135m-instruct or a local model dir")
    for key in INT_OPTIONS:
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help="default: the model's preset")
    p.add_argument("--principles", choices=("catalogue", "verifiable"), default=None,
                   help="principle source of x+/x- (default: the model's preset)")
    p.add_argument("--placement", choices=("system", "user"), default=None,
                   help="where the principle goes (default: the model's preset)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on shared CPUs)")
    p.add_argument("--dpo-prompt", choices=("x_plus", "plain"), default="x_plus",
                   help="prompt of the DPO pairs: x+ (same sequences as SSO's L+ pair) or the plain query")
    p.add_argument("--contenders", default=None, help="comma-separated subset of " + ", ".join(CONTENDERS) +
                   " (default: the model's preset)")
    for internal in ("--child", "--data", "--result"):
        p.add_argument(internal, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = PRESETS["tiny" if args.model == "sso-tiny" else "real"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        p.error(f"--contenders: expected a subset of {', '.join(CONTENDERS)}, got {args.contenders!r}")
    args.contenders = names
    if args.steps < 2:
        p.error(f"--steps: expected >= 2 (the first step is dropped as warm-up), got {args.steps}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return
    from sso.models.loading import load_tokenizer, resolve_model_path

    label = args.model
    args.model = resolve_model_path(args.model)
    pairs, triples = build_data(load_tokenizer(args.model), args.examples, args.response_words, seed=0,
                                dpo_prompt=args.dpo_prompt, principles=args.principles,
                                placement=args.placement)
    runs: dict[str, list[dict]] = {name: [] for name in args.contenders}
    with tempfile.TemporaryDirectory(prefix="sso-bench-train-") as data_dir:
        pairs.to_pickle(Path(data_dir) / "pairs.pkl")
        triples.to_pickle(Path(data_dir) / "triples.pkl")
        for _ in range(args.repeats):
            for name in args.contenders:
                runs[name].append(spawn(name, args, data_dir))
                print(f"  done {name}: {runs[name][-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    report(runs, args, label)


if __name__ == "__main__":
    main()

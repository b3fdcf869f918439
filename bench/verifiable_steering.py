"""Do verifiable principles steer a real small model? Compliance under good / bad / no principle.

For the first ``--queries`` shipped queries and every rule of :mod:`sso.data.verifiable`, the model
answers the query three ways: with the GOOD principle, with the BAD principle and with none (one
plain answer per query, checked against every rule). The principle goes in the user turn, after
the query as :func:`render_user_turn` writes it, or with ``--order before`` ahead of it, as the
pipeline's ``placement = "user"`` does. Printed per rule: the share of answers complying with the GOOD principle in
each condition, the pair accuracy (good answer complies and bad answer does not, as the rule judge
scores an SSO training pair), and the mean response tokens and share hitting the token cap.

Run (CPU, 8 queries x 21 prompts x 96 tokens; minutes on 2 idle cores, far longer when busy):
    python bench/verifiable_steering.py --model smollm2-135m-instruct --queries 8
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; use 1 when other processes share the cores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--order", choices=("after", "before"), default="after",
                    help="principle after the query (render_user_turn, as measured) or before it "
                         "(the pipeline's placement = 'user')")
    ap.add_argument("--rules", default="", help="comma-separated rule ids (default: all)")
    ap.add_argument("--dump", default="", help="write every answer to this JSONL file")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from sso.data.verifiable import RULE_IDS, RULES, render_user_turn
    from sso.generation.chat import render_prompt
    from sso.generation.sampling import GenerationParams, TransformersSampler
    from sso.judge.rules import compliance_rate, preference_accuracy_by_rule
    from sso.models.loading import resolve_model_path

    torch.set_num_threads(args.threads)
    lines = (ROOT / "sso" / "data" / "queries.jsonl").read_text().splitlines()
    queries = [json.loads(line) for line in lines[:args.queries]]
    t0 = time.perf_counter()
    sampler = TransformersSampler(resolve_model_path(args.model), dtype="float32", device="cpu",
                                  batch_size=args.batch_size)
    params = GenerationParams(temperature=args.temperature, top_p=args.top_p,
                              max_new_tokens=args.max_new_tokens, seed=args.seed,
                              greedy=args.temperature == 0.0)
    print(f"model {args.model}: load {time.perf_counter() - t0:.0f} s; {len(queries)} queries, "
          f"T={args.temperature}, top_p={args.top_p}, {args.max_new_tokens} new tokens, "
          f"principle in the user turn, {args.order} the query", flush=True)
    dump = open(args.dump, "w") if args.dump else None
    stats = {"tokens": 0, "seconds": 0.0}

    def prompt(query: str, principle: str | None) -> str:
        if principle is None or args.order == "before":
            return render_prompt(sampler.tokenizer, query, principle, placement="user")
        return render_prompt(sampler.tokenizer, render_user_turn(query, principle))

    def answer(conds: list[str], rid: str, texts: list[tuple[str, str | None]]) -> pd.DataFrame:
        """One answer per (query, principle) in ``texts`` (queries repeated per condition)."""
        t = time.perf_counter()
        comps = [c[0] for c in sampler.generate([prompt(q, p) for q, p in texts], params)]
        stats["seconds"] += time.perf_counter() - t
        stats["tokens"] += sum(c.n_tokens for c in comps)
        rows = [{"query_id": q["id"], "cond": cond, "rule_id": rid, "text": c.text,
                 "n_tokens": c.n_tokens, "capped": c.finish_reason == "length"}
                for (cond, q), c in zip([(k, q) for k in conds for q in queries], comps)]
        for r in rows if dump else []:
            dump.write(json.dumps(r, ensure_ascii=False) + "\n")
            dump.flush()
        return pd.DataFrame(rows).set_index("query_id")

    plain = answer(["none"], "", [(q["prompt"], None) for q in queries])
    print(f"{'rule':16} {'good':>6} {'bad':>6} {'none':>6} {'pair acc [95% CI]':>22}"
          f" {'tokens g/b/n':>14} {'capped g/b/n':>14}", flush=True)
    for rid in args.rules.split(",") if args.rules else RULE_IDS:
        both = answer(["good", "bad"], rid, [(q["prompt"], text)
                                             for text in (RULES[rid].good, RULES[rid].bad)
                                             for q in queries])
        good, bad = both[both.cond == "good"], both[both.cond == "bad"]
        rates = [compliance_rate(list(part.text), [rid] * len(part))[rid]
                 for part in (good, bad, plain)]
        pairs = pd.DataFrame({"prompt": good.index, "chosen": good.text.values,
                              "rejected": bad.text.values, "rule_id": rid})
        acc = preference_accuracy_by_rule(pairs)[rid]
        toks = "/".join(f"{part.n_tokens.mean():.0f}" for part in (good, bad, plain))
        cap = "/".join(f"{part.capped.mean():.0%}" for part in (good, bad, plain))
        print(f"{rid:16} " + " ".join(f"{r['complied']:>2}/{r['n']:<3}" for r in rates)
              + f" {acc['accuracy']:>6.2f} [{acc['ci_low']:.2f}, {acc['ci_high']:.2f}]"
              f" r{acc['reversed']} {toks:>14} {cap:>14}", flush=True)
    print(f"generated {stats['tokens']} tokens in {stats['seconds']:.0f} s "
          f"({stats['tokens'] / stats['seconds']:.0f} tokens/s)")
    sampler.close()
    if dump:
        dump.close()


if __name__ == "__main__":
    main()

"""Steps ``sample_responses`` (one foreach task per shard) and ``join_samples``.

``plan_shards`` splits the train and eval queries into contiguous shards (so joining in shard order
keeps query order). ``sample_responses`` samples, for every train query of its shard, ``y+ | x+``
and ``y- | x-`` and, for generator queries, ``y_o | x`` from the initial policy; and a base answer
for every eval query of its shard. ``join_samples`` merges the shards and drops degenerate records
(``y+ == y-``, ``y_o`` equal to either, or an empty response), counting each reason.

Outputs (join): ``sso_triples`` (generator queries: query_id, prompt, good/bad principle, y_plus,
y_minus, y_o), ``pbaa_pairs`` (all train queries: query_id, prompt, chosen = y+, rejected = y-),
``base_answers`` (query_id, prompt, answer) and ``report`` (counts). No side effects.
"""

from __future__ import annotations

import pandas as pd

from sso.generation.chat import render_prompt
from sso.config import SSOConfig
from sso.progress import progress_bar
from sso.generation.sampling import GenerationParams, Sampler, choose_backend, make_sampler


def plan_shards(queries: pd.DataFrame, eval_queries: pd.DataFrame | None, n_shards: int, *,
                shard_size: int = 0) -> list[dict]:
    """Contiguous shards of query ids (and eval ids); at most ``n_shards``, none empty.

    ``shard_size > 0`` overrides ``n_shards``: ``ceil(len(queries) / shard_size)`` shards of
    near-equal size, none larger than ``shard_size``. Eval ids are spread over the same shards.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if shard_size < 0:
        raise ValueError(f"shard_size must be >= 0, got {shard_size}")
    q_ids = list(queries["query_id"])
    e_ids = list(eval_queries["query_id"]) if eval_queries is not None else []
    if shard_size:
        n_shards = max(1, -(-len(q_ids) // shard_size))
    n = max(1, min(n_shards, max(len(q_ids), 1)))
    shards = []
    for i in range(n):
        shards.append({"index": i, "query_ids": _chunk(q_ids, i, n), "eval_ids": _chunk(e_ids, i, n)})
    return [s for s in shards if s["query_ids"] or s["eval_ids"]]


def _chunk(items: list, i: int, n: int) -> list:
    size, extra = divmod(len(items), n)
    start = i * size + min(i, extra)
    return items[start:start + size + (1 if i < extra else 0)]


def sampling_params(cfg: SSOConfig, *, greedy: bool = False) -> GenerationParams:
    s = cfg.sampling
    return GenerationParams(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                            greedy=greedy, seed=cfg.run.seed)


def eval_params(cfg: SSOConfig) -> GenerationParams:
    e = cfg.eval
    return GenerationParams(temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens,
                            greedy=e.greedy, seed=cfg.run.seed + 1)


def build_sampler(cfg: SSOConfig, model_path: str, adapter: dict[str, bytes] | None = None) -> Sampler:
    """The configured sampling engine; vLLM gets the ``[sampling]`` engine options and run seed."""
    if choose_backend(cfg.sampling.backend) == "vllm":
        from sso.generation.vllm_sampler import VLLMSampler, engine_options

        return VLLMSampler(model_path, model_cfg=cfg.model, adapter=adapter,
                           engine=engine_options(cfg.sampling), seed=cfg.run.seed)
    return make_sampler(cfg.sampling.backend, model_path, cfg.model, batch_size=cfg.sampling.batch_size,
                        adapter=adapter)


def _generate(sampler: Sampler, prompts: list[str], params: GenerationParams, progress=None):
    """``sampler.generate``, advancing ``progress`` (a :func:`sso.progress.progress_bar`) if given."""
    if progress is None:
        return sampler.generate(prompts, params)
    return sampler.generate(prompts, params, progress=progress)


def sample_principled(sampler: Sampler, rows: pd.DataFrame, params: GenerationParams,
                      progress=None) -> pd.DataFrame:
    """``y+ | x+`` and ``y- | x-`` for each row (query_id, prompt, good_principle, bad_principle)."""
    tok = sampler.tokenizer
    prompts = [render_prompt(tok, r.prompt, r.good_principle) for r in rows.itertuples()]
    prompts += [render_prompt(tok, r.prompt, r.bad_principle) for r in rows.itertuples()]
    out = _generate(sampler, prompts, params, progress)
    n = len(rows)
    plus, minus = [c[0] for c in out[:n]], [c[0] for c in out[n:]]
    return _typed(pd.DataFrame({
        "query_id": list(rows["query_id"]),
        "y_plus": [c.text for c in plus], "y_minus": [c.text for c in minus],
        "y_plus_tokens": [c.n_tokens for c in plus], "y_minus_tokens": [c.n_tokens for c in minus],
        "y_plus_finish": [c.finish_reason for c in plus], "y_minus_finish": [c.finish_reason for c in minus],
    }))


def sample_plain(sampler: Sampler, rows: pd.DataFrame, params: GenerationParams,
                 progress=None) -> pd.DataFrame:
    """One answer per row to the plain prompt (no principle): query_id, prompt, answer, ..."""
    tok = sampler.tokenizer
    out = _generate(sampler, [render_prompt(tok, p) for p in rows["prompt"]], params, progress)
    return _typed(pd.DataFrame({
        "query_id": list(rows["query_id"]), "prompt": list(rows["prompt"]),
        "answer": [c[0].text for c in out], "n_tokens": [c[0].n_tokens for c in out],
        "finish_reason": [c[0].finish_reason for c in out],
    }))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed column dtypes, so that an empty shard's frame does not change dtypes in the join."""
    kinds = {c: ("int64" if c.endswith("tokens") else "str") for c in df.columns if c != "query_id"}
    return df.astype(kinds)


def sample_responses(shard: dict, queries: pd.DataFrame, principles: pd.DataFrame,
                     eval_queries: pd.DataFrame, cfg: SSOConfig, model_path: str, *,
                     sampler: Sampler | None = None) -> dict:
    """Sample one shard. Returns {"samples": DataFrame, "base_answers": DataFrame}."""
    rows = _rows(queries, shard["query_ids"]).merge(
        principles[["query_id", "good_principle", "bad_principle"]], on="query_id", how="left",
        validate="one_to_one")
    missing = rows.loc[rows["good_principle"].isna(), "query_id"].tolist()
    if missing:
        raise ValueError(f"no principle for query ids {missing[:5]} (of {len(missing)})")
    own = sampler is None
    sampler = sampler or build_sampler(cfg, model_path)
    gen_rows = rows[rows["generator"]]
    n_prompts = 2 * len(rows) + len(gen_rows) + len(shard["eval_ids"])
    try:
        bar = progress_bar(n_prompts, f"sample shard {shard.get('index', 0)}", unit="prompt")
        samples = sample_principled(sampler, rows, sampling_params(cfg), progress=bar)
        plain = sample_plain(sampler, gen_rows, sampling_params(cfg, greedy=cfg.sampling.plain_greedy),
                             progress=bar)
        samples = samples.merge(
            plain[["query_id", "answer", "n_tokens", "finish_reason"]].rename(columns={
                "answer": "y_o", "n_tokens": "y_o_tokens", "finish_reason": "y_o_finish"}),
            on="query_id", how="left")
        base = sample_plain(sampler, _rows(eval_queries, shard["eval_ids"]), eval_params(cfg),
                            progress=bar)
        bar.close()
    finally:
        if own:
            sampler.close()
    return {"samples": samples, "base_answers": base}


def _rows(df: pd.DataFrame, ids: list) -> pd.DataFrame:
    by_id = df.set_index("query_id", drop=False)
    unknown = [i for i in ids if i not in by_id.index]
    if unknown:
        raise KeyError(f"unknown query ids in shard: {unknown[:5]}")
    return by_id.loc[list(ids)].reset_index(drop=True)


def drop_reasons(y_plus: str, y_minus: str, y_o: str | None) -> list[str]:
    """Why an SSO triple is degenerate (empty list: keep it)."""
    reasons = []
    if not y_plus.strip() or not y_minus.strip() or (y_o is not None and not y_o.strip()):
        reasons.append("empty_response")
    if y_plus == y_minus:
        reasons.append("y_plus_equals_y_minus")
    if y_o is not None and (y_o == y_plus or y_o == y_minus):
        reasons.append("y_o_equals_principled")
    return reasons


def join_samples(shard_results: list[dict], queries: pd.DataFrame, principles: pd.DataFrame) -> dict:
    """Merge shards in order; build sso_triples, pbaa_pairs, base_answers and a report."""
    samples = pd.concat([r["samples"] for r in shard_results], ignore_index=True)
    base = pd.concat([r["base_answers"] for r in shard_results], ignore_index=True)
    table = queries[["query_id", "prompt", "generator"]].merge(samples, on="query_id", how="inner",
                                                               validate="one_to_one")
    table = table.merge(principles[["query_id", "good_principle", "bad_principle"]], on="query_id",
                        how="left", validate="one_to_one")
    if len(table) != len(queries):
        raise ValueError(f"joined {len(table)} sampled queries but {len(queries)} were planned")

    counts: dict[str, int] = {}
    keep_triple, keep_pair = [], []
    for r in table.itertuples():
        y_o = r.y_o if r.generator else None
        t_reasons = drop_reasons(r.y_plus, r.y_minus, y_o) if r.generator else ["not_generator"]
        p_reasons = drop_reasons(r.y_plus, r.y_minus, None)
        keep_triple.append(not t_reasons)
        keep_pair.append(not p_reasons)
        for reason in t_reasons:
            if reason != "not_generator":
                counts[f"triples_dropped_{reason}"] = counts.get(f"triples_dropped_{reason}", 0) + 1
        for reason in p_reasons:
            counts[f"pairs_dropped_{reason}"] = counts.get(f"pairs_dropped_{reason}", 0) + 1

    principle_cols = ["good_principle", "bad_principle"]
    triples = table[keep_triple][["query_id", "prompt", *principle_cols, "y_plus", "y_minus", "y_o"]]
    pairs = table[keep_pair][["query_id", "prompt", "y_plus", "y_minus", *principle_cols]].rename(
        columns={"y_plus": "chosen", "y_minus": "rejected"})
    finish = pd.concat([table["y_plus_finish"], table["y_minus_finish"]])
    report = {
        "n_train_queries": len(table), "n_generator_queries": int(table["generator"].sum()),
        "n_sso_triples": len(triples), "n_pbaa_pairs": len(pairs), "n_base_answers": len(base),
        "n_shards": len(shard_results), "truncated_principled": int((finish == "length").sum()),
        "mean_tokens_y_plus": float(table["y_plus_tokens"].mean()),
        "mean_tokens_y_minus": float(table["y_minus_tokens"].mean()),
        **counts,
    }
    return {"sso_triples": triples.reset_index(drop=True), "pbaa_pairs": pairs.reset_index(drop=True),
            "base_answers": base, "report": report}

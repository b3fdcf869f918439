"""Step ``generate_answers``: the trained policy of one arm answers the eval queries.

Inputs: the eval records (query_id, prompt and, when carried, the rendered ``x_plain``: the base
answers table carries it, so both answer the very same prompt string), the arm's policy adapter
(bytes), the config and model path, or an injected sampler. Output: DataFrame (query_id, prompt,
x_plain, answer, n_tokens, finish_reason) with the same decoding settings as the base answers, so
the judge compares like with like.
Side effects: loads base model + adapter into the sampling engine (released before returning).
"""

from __future__ import annotations

import pandas as pd

from sso.config import SSOConfig
from sso.generation.records import sample_plain
from sso.generation.sampling import Sampler, make_sampler
from sso.progress import progress_bar


def generate_answers(eval_queries: pd.DataFrame, policy_adapter: dict[str, bytes], cfg: SSOConfig,
                     model_path: str, *, sampler: Sampler | None = None) -> pd.DataFrame:
    own = sampler is None
    sampler = sampler or make_sampler(cfg.sampling, model_path, cfg.model, adapter=policy_adapter,
                                      seed=cfg.run.seed)
    try:
        with progress_bar(len(eval_queries), "answer eval queries", unit="prompt") as bar:
            return sample_plain(sampler, eval_queries, cfg.generation_params("eval"), progress=bar)
    finally:
        if own:
            sampler.close()

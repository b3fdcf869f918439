"""Step ``generate_answers``: the trained policy of one arm answers the eval queries.

Inputs: eval_queries (query_id, prompt), the arm's policy adapter (bytes), the config and model
path. Output: DataFrame (query_id, prompt, answer, n_tokens, finish_reason) with the same decoding
settings as the base answers, so the judge compares like with like. No side effects.
"""

from __future__ import annotations

import pandas as pd

from sso.config import SSOConfig
from sso.progress import progress_bar
from sso.generation.sampling import Sampler

from .sample_responses import build_sampler, eval_params, sample_plain


def generate_answers(eval_queries: pd.DataFrame, policy_adapter: dict[str, bytes], cfg: SSOConfig,
                     model_path: str, *, sampler: Sampler | None = None) -> pd.DataFrame:
    own = sampler is None
    sampler = sampler or build_sampler(cfg, model_path, adapter=policy_adapter)
    try:
        with progress_bar(len(eval_queries), "answer eval queries", unit="prompt") as bar:
            return sample_plain(sampler, eval_queries, eval_params(cfg), progress=bar)
    finally:
        if own:
            sampler.close()

"""Pairwise LLM-as-judge evaluation (AlpacaEval / MT-Bench style), kept in small separate pieces.

- :mod:`sso.judge.prompts`   the judge prompt as data (named placeholders, ``PROMPT_VERSION``)
- :mod:`sso.judge.parse`     pure verdict parsing: text -> label, label log-probs -> label
- :mod:`sso.judge.cache`     content-addressed, process-safe persistent cache of raw judge outputs
- :mod:`sso.judge.transport` the ``openai`` client: bounded concurrency, retries, timeouts, usage, budget
- :mod:`sso.judge.local`     a local transformers model deciding by the two label tokens' log-probs
- :mod:`sso.judge.protocol`  both orders per pair, aggregation, win rate + bootstrap CI, accuracy

Nothing here imports ``openai``, ``torch`` or ``transformers`` at module load.
"""

"""Pairwise LLM-as-judge evaluation (AlpacaEval / MT-Bench style), kept in small separate pieces.

- :mod:`sso.judge.prompts`   the judge prompt as data (named placeholders, ``PROMPT_VERSION``) and
                             the judgment's parts (``JudgeParts``) each backend renders itself
- :mod:`sso.judge.parse`     pure verdict parsing: text -> label, label log-probs -> label
- :mod:`sso.judge.cache`     content-addressed, process-safe persistent cache of raw judge outputs
- :mod:`sso.judge.transport` the remote judge over :mod:`sso.clients`: retries, timeouts, usage, budget
- :mod:`sso.judge.local`     a local transformers model deciding by the two label tokens' log-probs
- :mod:`sso.judge.backends`  the judge a config names, and the remote judge's budget guard
- :mod:`sso.judge.pairs`     the pairs to compare, from the answer and training-pair tables
- :mod:`sso.judge.protocol`  both orders per pair, aggregation, win rate + bootstrap CI, accuracy
- :mod:`sso.judge.metrics`   the metrics and usage summary of one judge run
- :mod:`sso.judge.rules`     a rule judge for verifiable principles (no judge model)
- :mod:`sso.judge.stats`     length-controlled win rate and paired head-to-head figures

Nothing here imports ``openai``, ``torch`` or ``transformers`` at module load.

One judgment: ``protocol.run_judgments`` -> ``JudgeRequest.parts`` (cache key from the same parts)
-> ``backend.complete_many([(key, parts)])`` -> ``OpenAIJudge.complete`` renders
``render_judge_messages(*parts)`` / ``LocalJudge.encode`` renders ``render_judge_turns(*parts)`` in
its chat template -> raw record -> ``protocol.judgment_row`` (verdict by ``parse.decide_verdict``).
"""

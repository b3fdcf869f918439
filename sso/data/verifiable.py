"""Verifiable principle pairs: good/bad principles whose compliance a few lines of code can check.

The feature catalogue (:mod:`sso.data.principles`) and model-written principles describe qualities
(helpful, logical) that only a judge model can assess, and a small local model judging itself is
close to chance. A *verifiable* principle instead asks for a property of the text itself (a word
or sentence limit, an opening phrase, a list, a closing line, a word to use or avoid), so a pure
function decides whether an answer followed it, and preference pairs can be scored without any
judge model (:mod:`sso.judge.rules`).

Each rule has a good principle, a bad principle that mirrors its structure and describes a
plausible worse style, and a checker for the GOOD principle: ``check(response) -> bool`` plus a
graded ``score(response)`` in [0, 1] (1 exactly when ``check`` holds). Bad principles never name a
word or phrase the good one forbids or requires (naming it primes a small model to use it). The
checkers are pure and total over ``str`` (markdown, any script, empty text): a response without a
single word complies with no rule. Word counting and sentence splitting are documented in
:mod:`sso.data.text_checks`.

Steering (measured with ``bench/verifiable_steering.py``): SmolLM2-135M-Instruct, 8 shipped
queries, principle in the *user turn* (:func:`render_user_turn`), sampled at T 0.7 / top-p 0.8,
96 new tokens. Counts are answers complying with the GOOD principle; pair accuracy is the share
of (good answer, bad answer) pairs where only the good one complies.

    rule              good  bad  none  pair acc       rule           good  bad  none  pair acc
    max_words_40      5/8   1/8  0/8   0.62           three_bullets  0/8   0/8  0/8   0.00
    max_sentences_3   5/8   2/8  3/8   0.38           summary_line   2/8   0/8  0/8   0.25
    open_in_short     5/8   0/8  0/8   0.62           say_because    1/8   1/8  1/8   0.00
    numbered_list     4/8   0/8  0/8   0.50           give_example   1/8   0/8  0/8   0.12
                                                      no_filler      8/8   8/8  8/8   0.00
                                                      no_questions   8/8   7/8  8/8   0.12

Only the four on the left steer that model, so they are the default pool
(``DEFAULT_RULE_IDS``); the others stay in ``RULES`` for larger models (pass ``rule_ids``).
The texts are bare instructions that fit the user turn or the system message (where that model
follows them far less). Length rules need room: an answer cut at ``max_new_tokens`` is short
too, so keep the token cap well above a limit (96 tokens are about 70 words).

Assignment mirrors the catalogue's: one rule per query, drawn (from ``DEFAULT_RULE_IDS`` unless
told otherwise) by a generator seeded from SHA-256 of ``(seed, query_id)``, so a query's rule does
not depend on the other queries, their order or the shard. ``build_verifiable_principles``
returns the catalogue's output columns plus ``rule_id``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable

import pandas as pd

from sso.data.principles import OUTPUT_COLUMNS as CATALOGUE_COLUMNS
from sso.data.text_checks import (bullet_items, count_sentences, count_words, find_words,
                                  nonblank_lines, normalize_text, numbered_items, plain_line,
                                  strip_code)

__all__ = [
    "VERIFIABLE_VERSION", "SOURCE_VERIFIABLE", "OUTPUT_COLUMNS", "FILLER_WORDS", "VerifiableRule",
    "RULES", "RULE_IDS", "DEFAULT_RULE_IDS", "get_rule", "check_response", "score_response",
    "render_user_turn", "assign_verifiable_principles", "build_verifiable_principles",
]

# Bump when a principle text or a checker changes (it changes the training data and the scores).
VERIFIABLE_VERSION = "verifiable-v1"
SOURCE_VERIFIABLE = "verifiable"
OUTPUT_COLUMNS: tuple[str, ...] = (*CATALOGUE_COLUMNS, "rule_id")
FILLER_WORDS: frozenset[str] = frozenset({"basically", "actually", "very", "really", "just"})


@dataclass(frozen=True)
class VerifiableRule:
    """One verifiable principle pair and the checker of its good principle."""

    rule_id: str
    good: str
    bad: str
    check: Callable[[str], bool]
    score: Callable[[str], float]
    how: str                            # what ``check`` tests, in one line


def _has_words(text: str) -> bool:
    return count_words(text) > 0


def _ratio_score(measure: Callable[[str], int], limit: int, text: str) -> float:
    n = measure(text)
    return 0.0 if n == 0 else min(1.0, limit / n)


def check_max_words(text: str, limit: int) -> bool:
    """1 <= words <= ``limit``."""
    return 1 <= count_words(text) <= limit


def check_max_sentences(text: str, limit: int) -> bool:
    """1 <= sentences <= ``limit``."""
    return 1 <= count_sentences(text) <= limit


_IN_SHORT = re.compile(r"in\s+short\s*,", re.I)


def check_opens_with(text: str, opener: re.Pattern) -> bool:
    """The first non-blank line, markdown marks removed, starts with ``opener``; text has words."""
    lines = nonblank_lines(text)
    return bool(lines) and opener.match(plain_line(lines[0])) is not None and _has_words(text)


def check_numbered_list(text: str) -> bool:
    """At least 3 numbered-list lines, numbered 1, 2, 3, ... in order."""
    nums = numbered_items(text)
    return len(nums) >= 3 and nums == list(range(1, len(nums) + 1))


def score_numbered_list(text: str) -> float:
    """1 when compliant, else the share of the 3 required items present (in sequence)."""
    if check_numbered_list(text):
        return 1.0
    nums, run = numbered_items(text), 0
    while run < len(nums) and nums[run] == run + 1:
        run += 1
    return min(run, 2) / 3.0


def check_three_bullets(text: str) -> bool:
    """Exactly 3 bullet lines, each with a word (an intro or closing line is allowed)."""
    items = bullet_items(text)
    return len(items) == 3 and all(_has_words(item) for item in items)


def score_three_bullets(text: str) -> float:
    """1 when compliant, else ``max(0, 1 - |bullets - 3| / 3)``."""
    return 1.0 if check_three_bullets(text) else max(0.0, 1.0 - abs(len(bullet_items(text)) - 3) / 3)


_SUMMARY = re.compile(r"summary\s*:", re.I)


def check_summary_line(text: str) -> bool:
    """The last non-blank line starts with ``Summary:`` (markdown marks removed) and has words,
    or is the one line after a bare ``Summary:`` line."""
    lines = nonblank_lines(text)
    if not lines:
        return False
    last = plain_line(lines[-1])
    m = _SUMMARY.match(last)
    if m is not None:
        return _has_words(last[m.end():])
    # a bare "Summary:" line followed by exactly one line of summary also counts
    before = plain_line(lines[-2]) if len(lines) >= 2 else ""
    m = _SUMMARY.fullmatch(before.strip())
    return m is not None and _has_words(last)


_BECAUSE = re.compile(r"\bbecause\b", re.I)
_EXAMPLE = re.compile(r"\bfor\s+(?:example|instance)\b", re.I)


def check_uses_because(text: str) -> bool:
    """The word ``because`` appears (any case)."""
    return _BECAUSE.search(normalize_text(text)) is not None


def check_gives_example(text: str) -> bool:
    """``for example`` or ``for instance`` appears (any case)."""
    return _EXAMPLE.search(normalize_text(text)) is not None


def check_no_filler(text: str) -> bool:
    """Has words and none of them (lower-cased) is one of ``FILLER_WORDS``."""
    words = [w.lower() for w in find_words(text)]
    return bool(words) and not any(w in FILLER_WORDS for w in words)


def check_no_questions(text: str) -> bool:
    """Has words and no ``?`` (or ``¿``) outside code blocks and inline code."""
    prose = strip_code(text)
    return _has_words(text) and "?" not in prose and "¿" not in prose


def _binary(check: Callable[[str], bool]) -> Callable[[str], float]:
    return lambda text: float(check(text))


def _rule(rule_id: str, good: str, bad: str, check: Callable[[str], bool], how: str,
          score: Callable[[str], float] | None = None) -> VerifiableRule:
    return VerifiableRule(rule_id, good, bad, check, score or _binary(check), how)


_words_40 = partial(check_max_words, limit=40)
_sentences_3 = partial(check_max_sentences, limit=3)

_CATALOGUE: tuple[VerifiableRule, ...] = (
    _rule("max_words_40", "Answer in at most 40 words.",
          "Answer in at least 150 words, rambling and repeating yourself.",
          _words_40, "1 to 40 words", partial(_ratio_score, count_words, 40)),
    _rule("max_sentences_3", "Answer in at most 3 short sentences.",
          "Answer in at least 10 long, rambling sentences.",
          _sentences_3, "1 to 3 sentences", partial(_ratio_score, count_sentences, 3)),
    _rule("open_in_short", 'Begin your reply with the words "In short," and then answer.',
          "Begin your reply with a long, wandering preamble and only then answer.",
          partial(check_opens_with, opener=_IN_SHORT), "first line starts with 'In short,'"),
    _rule("numbered_list", "Answer as a numbered list (1., 2., 3., ...) of at least 3 short points.",
          "Answer as one long unbroken paragraph, with no list and no line breaks.",
          check_numbered_list, "at least 3 numbered lines 1, 2, 3, ...", score_numbered_list),
    _rule("three_bullets",
          'Answer with exactly 3 bullet points, each on its own line starting with "- ".',
          "Answer as one long block of prose, with no structure at all.",
          check_three_bullets, "exactly 3 bullet lines", score_three_bullets),
    _rule("summary_line",
          'End your reply with a final line that starts with "Summary:" and sums up the answer.',
          "End your reply abruptly, without any closing line that sums up the answer.",
          check_summary_line, "last line starts with 'Summary:'"),
    _rule("say_because", 'Give the reason behind your answer, using the word "because".',
          "Give your answer as a bare claim, without any reason behind it.",
          check_uses_because, "contains the word 'because'"),
    _rule("give_example", 'Include one concrete example, introduced with "For example,".',
          "Keep the reply abstract and general, with no concrete cases or illustrations.",
          check_gives_example, "contains 'for example' or 'for instance'"),
    _rule("no_filler", "Write in plain, direct language, without filler words or hedging.",
          "Write in a padded, hedging style, full of filler words and empty emphasis.",
          check_no_filler, "none of: " + ", ".join(sorted(FILLER_WORDS))),
    _rule("no_questions", "Answer with statements only; do not ask the user any questions.",
          "Answer mostly with questions back to the user instead of statements.",
          check_no_questions, "no question mark outside code"),
)

RULES: dict[str, VerifiableRule] = {r.rule_id: r for r in _CATALOGUE}
RULE_IDS: tuple[str, ...] = tuple(RULES)
# The rules SmolLM2-135M-Instruct was measured to follow (see the module docstring).
DEFAULT_RULE_IDS: tuple[str, ...] = ("max_words_40", "max_sentences_3", "open_in_short",
                                     "numbered_list")


def get_rule(rule_id: str) -> VerifiableRule:
    """The rule named ``rule_id``; ValueError naming the known ids otherwise."""
    rule = RULES.get(rule_id) if isinstance(rule_id, str) else None
    if rule is None:
        raise ValueError(f"unknown verifiable rule {rule_id!r}; expected one of {list(RULE_IDS)}")
    return rule


def check_response(rule_id: str, response: str) -> bool:
    """Whether ``response`` complies with the GOOD principle of ``rule_id``."""
    return get_rule(rule_id).check(normalize_text(response))


def score_response(rule_id: str, response: str) -> float:
    """Graded compliance in [0, 1] with the GOOD principle of ``rule_id`` (1 iff it complies)."""
    return float(get_rule(rule_id).score(normalize_text(response)))


def render_user_turn(query: str, principle: str) -> str:
    """The user turn with the principle after the query, separated by a blank line."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-blank str")
    if not isinstance(principle, str) or not principle.strip():
        raise ValueError("principle must be a non-blank str")
    return f"{query.rstrip()}\n\n{principle.strip()}"


def _rng_for(seed: int, query_id: str) -> random.Random:
    digest = hashlib.sha256(f"sso-verifiable\x00{seed}\x00{query_id}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _check_rule_ids(rule_ids: Iterable[str] | None) -> tuple[str, ...]:
    if rule_ids is None:
        return DEFAULT_RULE_IDS
    if isinstance(rule_ids, str):
        raise ValueError("rule_ids must be a list of rule ids, not a single string")
    ids = tuple(rule_ids)
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"rule_ids must be non-empty and without duplicates, got {list(ids)}")
    for rid in ids:
        get_rule(rid)
    return ids


def _check_query_ids(query_ids: Iterable) -> list:
    if isinstance(query_ids, str):
        raise ValueError("query_ids must be a list of ids, not a single string")
    ids = list(query_ids)
    if any(q is None or (pd.api.types.is_scalar(q) and pd.isna(q)) for q in ids):
        raise ValueError("query_ids contains null values")
    counts = Counter(str(q) for q in ids)
    dup = sorted(q for q, n in counts.items() if n > 1)
    if dup:
        raise ValueError(f"query_ids has duplicated values, e.g. {dup[:10]}")
    return ids


def assign_verifiable_principles(query_ids: Iterable, seed: int,
                                 rule_ids: Iterable[str] | None = None
                                 ) -> list[tuple[object, str, str, str]]:
    """One ``(query_id, rule_id, good, bad)`` per query, in input order.

    The rule is drawn from ``rule_ids`` (default: ``DEFAULT_RULE_IDS``) by a generator seeded only
    by ``(seed, str(query_id))``; query ids must be unique and non-null.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    pool = _check_rule_ids(rule_ids)
    out = []
    for qid in _check_query_ids(query_ids):
        # only random() is reproducible across Python versions; derive the index from it
        index = min(int(_rng_for(seed, str(qid)).random() * len(pool)), len(pool) - 1)
        rule = RULES[pool[index]]
        out.append((qid, rule.rule_id, rule.good, rule.bad))
    return out


def build_verifiable_principles(queries: pd.DataFrame, *, seed: int,
                                rule_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """One verifiable principle pair per query, in input order, as a principles table.

    ``queries`` needs a ``query_id`` column (unique, non-null). Returns the catalogue's columns
    (``query_id``, ``features`` = ``[rule_id]``, ``good_principle``, ``bad_principle``, ``source``
    = "verifiable") plus ``rule_id``, with a fresh RangeIndex. The principle texts are bare
    instructions (see :func:`render_user_turn`).
    """
    if not isinstance(queries, pd.DataFrame):
        raise ValueError(f"queries must be a pandas DataFrame, got {type(queries).__name__}")
    if "query_id" not in queries.columns:
        raise ValueError(
            f"queries is missing the required column 'query_id' (has {list(queries.columns)})")
    rows = [{"query_id": qid, "features": [rid], "good_principle": good, "bad_principle": bad,
             "source": SOURCE_VERIFIABLE, "rule_id": rid}
            for qid, rid, good, bad in assign_verifiable_principles(
                queries["query_id"].tolist(), seed, rule_ids)]
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in OUTPUT_COLUMNS})
    return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))

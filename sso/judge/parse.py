"""Pure verdict parsing: a judge's text or its label log-probabilities -> ``"A"``, ``"B"`` or None.

None means *unparsable*: the protocol counts it and reports it, and never scores it as a win or a
loss. The text parser accepts, in order of trust:

1. the whole reply is a label, possibly decorated: ``A``, ``b``, ``[[A]]``, ``(B)``, ``**A**``,
   ``Reply B.``;
2. explicit verdict phrases anywhere: ``[[A]]``, ``Reply A is better``, ``the better reply is B``,
   ``Verdict: a.``; if these name *both* labels the reply is ambiguous -> None;
3. a reply that starts with a label followed by punctuation or a line break (``A. Because ...``).

Anything else (empty text, prose that names no winner, both labels, garbage) -> None. A lower-case
``a`` is accepted only where it cannot be the English article (alone, or right before punctuation).
"""

from __future__ import annotations

import math
import re
from typing import Mapping

from sso.judge.prompts import LABELS

# A remote judge's label log-probs decide only where the judge put at least this much probability
# on the two labels at the first position; otherwise its text decides (a judge that is not
# answering with a label should not be turned into a verdict by its top-5 noise).
MIN_LABEL_MASS = 0.5

_NOUN = r"(?:reply|response|output|answer|option|assistant|candidate)"
_WHOLE = re.compile(rf"(?:{_NOUN}\s*)?\(?\s*([ab])\s*\)?", re.I)
_STRIP = re.compile(r"^[\s\W_]+|[\s\W_]+$")
_VERDICT_WORD = (rf"(?:verdict|winner|choice|decision|better\s+{_NOUN}|best\s+{_NOUN}|"
                 rf"preferred\s+{_NOUN}|(?:my\s+|final\s+)?answer)\s*(?:is|:|=)\s*[*\"'`(\[]*\s*"
                 rf"(?:{_NOUN}\s*)?\(?")
# explicit phrases with an upper-case label (the words around it in any case)
_EXPLICIT = [
    re.compile(r"\[\[\s*([AB])\s*\]\]"),
    re.compile(rf"\b{_NOUN}\s*\(?(?-i:([AB]))\)?\s+(?:is|was|seems)\s+"
               r"(?:clearly\s+|slightly\s+|much\s+|far\s+)?"
               r"(?:better|preferred|preferable|superior|stronger|the\s+better|the\s+winner)", re.I),
    re.compile(rf"{_VERDICT_WORD}(?-i:([AB]))\b", re.I),
    # a lower-case label only right before punctuation or the end (never the article "a")
    re.compile(rf"{_VERDICT_WORD}([ab])\)?(?=[*\"'`)\].,;:!]|\s*$)", re.I),
]
_LEADING = re.compile(r"^[\s*\"'`(\[]*([AB])(?:[)\].:;,!*\"'`]|\s*\n|\s*$)")


def parse_verdict(text: str | None) -> str | None:
    """The label a judge's reply names as better, or None when it names none or both."""
    if not isinstance(text, str) or not text.strip():
        return None
    stripped = _STRIP.sub("", text.strip())
    m = _WHOLE.fullmatch(stripped)
    if m:
        return m.group(1).upper()
    found = {g.upper() for pattern in _EXPLICIT for g in pattern.findall(text)}
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        return None
    m = _LEADING.match(text)
    return m.group(1) if m else None


def collect_label_logprobs(top_logprobs: Mapping[str, float] | list | None) -> dict[str, float] | None:
    """Label -> log-prob from one position's top alternatives (``[(token, logprob), ...]`` or a
    mapping). Tokens are compared after stripping whitespace (``" A"`` counts as ``A``; several
    spellings of one label are summed). Labels absent from the list are left out; None if no list."""
    if top_logprobs is None:
        return None
    items = top_logprobs.items() if isinstance(top_logprobs, Mapping) else top_logprobs
    out: dict[str, float] = {}
    for token, logprob in items:
        label = str(token).strip()
        if label in LABELS and logprob is not None and math.isfinite(float(logprob)):
            prev = out.get(label)
            out[label] = float(logprob) if prev is None else float(
                max(prev, logprob) + math.log1p(math.exp(-abs(prev - logprob))))
    return out


def decide_verdict(text: str | None, label_logprobs: Mapping[str, float] | None,
                   *, forced: bool = False) -> tuple[str | None, str]:
    """(verdict, source) for one judgment.

    - ``forced`` (the local judge): the label with the larger log-prob wins; source ``"local"``.
    - label log-probs carrying at least ``MIN_LABEL_MASS`` probability: the larger one wins;
      source ``"logprobs"`` (AlpacaEval's way of reading a judge).
    - otherwise the text is parsed; source ``"text"`` (verdict None when unparsable).
    """
    lp = dict(label_logprobs or {})
    if forced:
        if not all(lab in lp for lab in LABELS):
            return None, "local"
        a, b = (lp[lab] for lab in LABELS)
        if not (math.isfinite(a) and math.isfinite(b)) or a == b:
            return None, "local"
        return (LABELS[0] if a > b else LABELS[1]), "local"
    if lp:
        mass = sum(math.exp(v) for v in lp.values())
        if mass >= MIN_LABEL_MASS:
            a = lp.get(LABELS[0], -math.inf)
            b = lp.get(LABELS[1], -math.inf)
            if a != b:
                return (LABELS[0] if a > b else LABELS[1]), "logprobs"
    return parse_verdict(text), "text"

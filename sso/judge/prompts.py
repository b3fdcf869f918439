"""The judge prompt, as data.

A template is a system message and a user message with the named placeholders ``{instruction}``,
``{output_a}`` and ``{output_b}``; the judge answers with one of the neutral labels ``A`` / ``B``.
A judge backend receives a judgment as its parts (:class:`JudgeParts`) and renders them at its own
edge: the remote judge as chat messages (:func:`render_judge_messages`), the local judge as the
(system, user) turns (:func:`render_judge_turns`) put through its own chat template.
``PROMPT_VERSION`` is part of every cache key: change it whenever the wording, the labels or the
decoding settings below change, so that old cached judgments are not reused for a different prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

LABELS: tuple[str, str] = ("A", "B")

# Decoding settings of a remote judge (part of the judge identity in the cache key).
MAX_TOKENS = 16          # room for "[[A]]"-style answers from chatty judges; the label comes first
TOP_LOGPROBS = 5         # first-token alternatives requested where the endpoint supports logprobs


class JudgeParts(NamedTuple):
    """What one judgment shows the judge: the instruction, the reply under label A, under label B."""

    instruction: str
    output_a: str
    output_b: str


@dataclass(frozen=True)
class JudgePrompt:
    """A pairwise judge prompt: ``system`` is fixed text, ``user`` holds the named placeholders."""

    version: str
    system: str
    user: str

    def render_turns(self, *, instruction: str, output_a: str, output_b: str) -> tuple[str, str]:
        """(system text, user text) for one comparison (values inserted verbatim, braces included)."""
        values = {"instruction": instruction, "output_a": output_a, "output_b": output_b}
        return self.system, self.user.format_map(values)

    def render(self, *, instruction: str, output_a: str, output_b: str) -> list[dict[str, str]]:
        """Chat messages for one comparison: the system turn, then the user turn."""
        system, user = self.render_turns(instruction=instruction, output_a=output_a, output_b=output_b)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]


PAIRWISE = JudgePrompt(
    version="pairwise-ab-v1",
    system=(
        "You are a careful and impartial judge of AI assistant replies. You will see one user "
        "instruction and two candidate replies, labelled A and B. Decide which reply serves the "
        "user better: it follows the instruction, is correct, helpful and harmless. The order in "
        "which the replies are shown says nothing about their quality, and a longer reply is not "
        "better for being longer. Answer with the single letter A or B and nothing else."
    ),
    user=(
        "# Instruction\n{instruction}\n\n"
        "# Reply A\n{output_a}\n\n"
        "# Reply B\n{output_b}\n\n"
        "Which reply is better? Answer with one letter: A or B."
    ),
)

PROMPT_VERSION = PAIRWISE.version


def render_judge_messages(instruction: str, output_a: str, output_b: str,
                          prompt: JudgePrompt = PAIRWISE) -> list[dict[str, str]]:
    """The judge's chat messages with ``output_a`` shown under label A and ``output_b`` under B."""
    return prompt.render(instruction=instruction, output_a=output_a, output_b=output_b)


def render_judge_turns(instruction: str, output_a: str, output_b: str,
                       prompt: JudgePrompt = PAIRWISE) -> tuple[str, str]:
    """The judge's (system, user) texts, the same as :func:`render_judge_messages`' contents."""
    return prompt.render_turns(instruction=instruction, output_a=output_a, output_b=output_b)

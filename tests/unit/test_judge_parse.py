"""Table tests for the pure verdict parsers in sso.judge.parse."""

from __future__ import annotations

import math

import pytest

from sso.judge.parse import MIN_LABEL_MASS, collect_label_logprobs, decide_verdict, parse_verdict

CASES = [
    # well-formed
    ("A", "A"), ("B", "B"), ("A\n", "A"), ("  B  ", "B"),
    ("[[A]]", "A"), ("(B)", "B"), ("**A**", "A"), ("Reply B.", "B"), ("Output (A)", "A"),
    # extra chatter
    ("The better reply is B.", "B"),
    ("Reply A is better than reply B because it answers the question.", "A"),
    ("After careful thought, my verdict: [[B]]", "B"),
    ("Final answer: **B**", "B"),
    ("Answer: A", "A"),
    ("A. It follows the instruction; B does not.", "A"),
    ("B\n\nReply B is concise and correct.", "B"),
    # lowercase
    ("a", "A"), ("b", "B"), ("b.", "B"), ("verdict: a.", "A"), ("My answer is b", "B"),
    ("the answer is a bit long", None),          # the article, not a label
    # both labels
    ("A or B", None), ("A and B are equally good.", None), ("[[A]] [[B]]", None),
    ("Reply A is better. Actually, reply B is better.", None),
    # empty
    ("", None), ("   ", None), ("\n\n", None), (None, None),
    # garbage
    ("banana", None), ("ÿ\x00ﬁ", None), ("A good reply would mention the date.", None),
    ("lorem ipsum dolor", None), ("AB", None), ("C", None), ("{\"winner\": 3}", None),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_parse_verdict_table(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize("tops,expected", [
    ({"A": -0.1, "B": -2.5, "The": -3.0}, {"A": -0.1, "B": -2.5}),
    ([(" A", -1.0), ("A", -1.0)], {"A": math.log(2 * math.exp(-1.0))}),   # spellings are summed
    ({"x": -0.1}, {}),
    (None, None),
    ({"A": float("-inf"), "B": -1.0}, {"B": -1.0}),
])
def test_collect_label_logprobs_table(tops, expected):
    got = collect_label_logprobs(tops)
    if expected is None:
        assert got is None
    else:
        assert got.keys() == expected.keys()
        for k in expected:
            assert got[k] == pytest.approx(expected[k])


@pytest.mark.parametrize("text,lp,forced,expected", [
    ("B", {"A": -0.05, "B": -3.0}, False, ("A", "logprobs")),      # confident logprobs decide
    ("B", {"A": -3.0}, False, ("B", "text")),                       # too little label mass: text
    ("junk", {"A": math.log(0.3), "B": math.log(0.25)}, False, ("A", "logprobs")),
    ("junk", {"A": math.log(0.2), "B": math.log(0.2)}, False, (None, "text")),
    ("A", None, False, ("A", "text")),
    ("junk", None, False, (None, "text")),
    ("", {"A": -9.0, "B": -8.0}, True, ("B", "local")),             # forced choice
    ("", {"A": -8.0, "B": -8.0}, True, (None, "local")),            # an exact tie is no verdict
    ("", {"A": -8.0}, True, (None, "local")),
])
def test_decide_verdict_table(text, lp, forced, expected):
    assert decide_verdict(text, lp, forced=forced) == expected


def test_min_label_mass_is_a_probability():
    assert 0.0 < MIN_LABEL_MASS <= 1.0

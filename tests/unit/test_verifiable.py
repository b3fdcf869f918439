"""Unit tests for sso.data.verifiable and sso.data.text_checks (rule-checked principles)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from sso.data import text_checks as T
from sso.data.principles import OUTPUT_COLUMNS as CATALOGUE_COLUMNS
from sso.data.verifiable import (DEFAULT_RULE_IDS, FILLER_WORDS, OUTPUT_COLUMNS, RULE_IDS, RULES,
                                 assign_verifiable_principles, build_verifiable_principles,
                                 check_response, get_rule, render_user_turn, score_response)

LONG = " ".join(["word"] * 41) + "."
GARBAGE = "\x00\ufffd #### *** --- ``` ``` ... ?!"

# (rule_id, response, complies, what the case is)
CASES = [
    ("max_words_40", "The sky is blue because air scatters blue light most.", True, "compliant"),
    ("max_words_40", LONG, False, "41 words"),
    ("max_words_40", " ".join(["w"] * 40), True, "exactly 40 words"),
    ("max_words_40", "**Short** answer:\n\n- one\n- two", True, "markdown marks are not words"),
    ("max_words_40", "天空是蓝色的。", True, "an unspaced script counts as one word"),
    ("max_sentences_3", "One. Two! Three?", True, "compliant"),
    ("max_sentences_3", "One. Two. Three. Four.", False, "four sentences"),
    ("max_sentences_3", "Dr. Smith paid $3.50, e.g. today. Fine.", True, "abbreviations and decimals"),
    ("max_sentences_3", "- one\n- two\n- three\n- four", False, "each list item is a sentence"),
    ("max_sentences_3", "A soft\nline break. Two.", True, "soft line breaks join a paragraph"),
    ("max_sentences_3", "Ｏｎｅ？ Ｔｗｏ！ Ｔｈｒｅｅ。 Ｆｏｕｒ．", False, "full-width punctuation"),
    ("open_in_short", "In short, yes.", True, "compliant"),
    ("open_in_short", "**In short**, yes.", True, "bold opener"),
    ("open_in_short", "\n\n## In short, it depends", True, "heading after blank lines"),
    ("open_in_short", "in  short , yes", True, "any case and spacing"),
    ("open_in_short", "Well, in short, yes.", False, "not at the start"),
    ("open_in_short", "In shortly, yes.", False, "a different word"),
    ("open_in_short", "In short", False, "no comma"),
    ("numbered_list", "Steps:\n1. Open it.\n2. Fix it.\n3. Close it.", True, "compliant"),
    ("numbered_list", "1) a\n2) b\n3) c\n4) d", True, "parentheses, four items"),
    ("numbered_list", "**1.** a\n**2.** b\n**3.** c", True, "bold numbers"),
    ("numbered_list", "1. a\n2. b", False, "two items"),
    ("numbered_list", "1. a\n3. b\n4. c", False, "not in sequence"),
    ("numbered_list", "```\n1. a\n2. b\n3. c\n```", False, "inside a code block"),
    ("numbered_list", "It costs 1. Then 2. Then 3.", False, "numbers inside a line"),
    ("three_bullets", "Here:\n- a\n- b\n- c\nThat is all.", True, "compliant with intro/outro"),
    ("three_bullets", "* a\n+ b\n• c", True, "other bullet marks"),
    ("three_bullets", "- a\n- b\n- c\n- d", False, "four bullets"),
    ("three_bullets", "**a**\n**b**\n**c**", False, "bold lines are not bullets"),
    ("three_bullets", "- a\n---\n- b\n- c", True, "a horizontal rule is no bullet"),
    ("three_bullets", "- a\n- b\n- ***", False, "a bullet without a word"),
    ("summary_line", "Body text.\nSummary: it works.", True, "compliant"),
    ("summary_line", "Body.\n\n**Summary:** it works.\n\n", True, "bold, trailing blank lines"),
    ("summary_line", "Summary: it works.\nMore text after.", False, "not the last line"),
    ("summary_line", "Body.\n\n**Summary:**\nIt works.", True, "bare label, one line after"),
    ("summary_line", "Summary:\nIt works.\nAnd more.", False, "bare label, two lines after"),
    ("summary_line", "Body.\nSummary:", False, "nothing after the colon"),
    ("summary_line", "Body.\nIn summary, it works.", False, "a different phrase"),
    ("say_because", "It fails because the cable is loose.", True, "compliant"),
    ("say_because", "BECAUSE it is late.", True, "any case"),
    ("say_because", "It fails since the cable is loose.", False, "another connective"),
    ("say_because", "Becauseof the cable.", False, "not a whole word"),
    ("give_example", "Use a lock. For example, a U-lock.", True, "compliant"),
    ("give_example", "Many fruits, for instance apples.", True, "for instance"),
    ("give_example", "Many fruits, e.g. apples.", False, "e.g. is not accepted"),
    ("no_filler", "Check the tyre pressure first.", True, "compliant"),
    ("no_filler", "It is Very important.", False, "capitalised filler"),
    ("no_filler", "I **just** think so.", False, "filler in bold"),
    ("no_filler", "Justice is adjusted.", True, "filler inside longer words"),
    ("no_questions", "Here is the answer.", True, "compliant"),
    ("no_questions", "Is it late?", False, "a question"),
    ("no_questions", "Is it late？", False, "full-width question mark"),
    ("no_questions", "¿Qué hora es", False, "an inverted question mark"),
    ("no_questions", "Use `a ? b : c` here.\n```\nx = y ? 1 : 2\n```", True, "? only in code"),
]


def test_cases_cover_every_rule():
    assert {rid for rid, *_ in CASES} == set(RULE_IDS)
    for rid in RULE_IDS:
        assert {ok for r, _, ok, _ in CASES if r == rid} == {True, False}, rid


@pytest.mark.parametrize("rule_id,text,expected,what", CASES,
                         ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_checker_table(rule_id, text, expected, what):
    assert check_response(rule_id, text) is expected
    score = score_response(rule_id, text)
    assert 0.0 <= score <= 1.0
    assert (score == 1.0) is expected          # the graded score is 1 exactly when compliant


@pytest.mark.parametrize("rule_id", RULE_IDS)
@pytest.mark.parametrize("text", ["", "   \n\t ", GARBAGE], ids=["empty", "blank", "garbage"])
def test_no_rule_is_met_without_words(rule_id, text):
    assert check_response(rule_id, text) is False
    assert score_response(rule_id, text) == 0.0


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_checkers_reject_non_strings(rule_id):
    with pytest.raises(ValueError, match="str"):
        check_response(rule_id, None)


def test_unknown_rule_names_the_known_ones():
    with pytest.raises(ValueError, match="max_words_40"):
        get_rule("max_words_4")


def test_graded_scores():
    assert score_response("max_words_40", " ".join(["w"] * 80)) == pytest.approx(0.5)
    assert score_response("max_sentences_3", "A. B. C. D. E. F.") == pytest.approx(0.5)
    assert score_response("three_bullets", "- a\n- b") == pytest.approx(2 / 3)
    assert score_response("numbered_list", "1. a\n2. b") == pytest.approx(2 / 3)
    assert score_response("summary_line", "no summary") == 0.0


@pytest.mark.parametrize("text,expected", [
    ("", 0), ("...", 0), ("don't stop", 2), ("well-known 3.14 10,000 9:15", 4),
    ("e.g. U.S. law", 3), ("`code_name` here", 3), ("Grüße, naïve café", 3), ("😀 ok 👍", 1),
])
def test_count_words(text, expected):
    assert T.count_words(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("", []), ("No end", ["No end"]), ("One. Two", ["One.", "Two"]),
    ("He said \"stop.\" Then left.", ["He said \"stop.\"", "Then left."]),
    ("# Title\nBody text. More", ["Title", "Body text.", "More"]),
    ("Wait... what?! Yes.", ["Wait...", "what?!", "Yes."]),
    ("```\nprint(1). x\n```\nDone.", ["code block.", "Done."]),
    ("```\nunclosed fence", ["code block."]),
    ("天空是蓝色的。因为散射。", ["天空是蓝色的。", "因为散射。"]),
])
def test_split_sentences(text, expected):
    assert T.split_sentences(text) == expected


def test_normalize_rejects_non_str_and_unifies_line_ends():
    assert T.normalize_text("a\r\nb\rc") == "a\nb\nc"
    with pytest.raises(ValueError, match="str"):
        T.normalize_text(b"bytes")


def test_catalogue_texts():
    assert 8 <= len(RULES) <= 12
    assert set(DEFAULT_RULE_IDS) < set(RULE_IDS) and len(set(DEFAULT_RULE_IDS)) == len(DEFAULT_RULE_IDS)
    for rule in RULES.values():
        assert rule.good.strip() and rule.bad.strip() and rule.good != rule.bad
        # a bad text never names a quoted phrase (an opener, a required word) of the good one
        for quoted in re.findall(r'"([^"]+)"', rule.good):
            assert quoted.strip(' ,').lower() not in rule.bad.lower(), rule.rule_id
        assert not any(re.search(rf"\b{w}\b", rule.bad, re.I) for w in FILLER_WORDS), rule.rule_id


def test_assignment_is_seeded_per_query():
    ids = [f"q{i:04d}" for i in range(300)]
    first = assign_verifiable_principles(ids, seed=7)
    assert first == assign_verifiable_principles(ids, seed=7)
    # a query's rule does not depend on the other queries or their order
    by_id = {qid: rid for qid, rid, _, _ in first}
    assert {q: r for q, r, _, _ in assign_verifiable_principles(ids[::-3], seed=7)} == {
        q: by_id[q] for q in ids[::-3]}
    assert [r for _, r, _, _ in assign_verifiable_principles(ids, seed=8)] != [
        r for _, r, _, _ in first]
    assert {r for _, r, _, _ in first} == set(DEFAULT_RULE_IDS)    # the default pool, all of it
    every = assign_verifiable_principles(ids, seed=7, rule_ids=RULE_IDS)
    assert {r for _, r, _, _ in every} == set(RULE_IDS)
    for qid, rid, good, bad in first:
        assert (good, bad) == (RULES[rid].good, RULES[rid].bad)


def test_assignment_restricted_pool_and_bad_input():
    pool = ["max_words_40", "open_in_short"]
    got = assign_verifiable_principles([1, 2, 3, 4, 5, 6, 7, 8], seed=0, rule_ids=pool)
    assert {rid for _, rid, _, _ in got} <= set(pool)
    assert [q for q, *_ in got] == [1, 2, 3, 4, 5, 6, 7, 8]
    for bad, match in [(dict(query_ids=["a", "a"]), "duplicated"),
                       (dict(query_ids=["a", None]), "null"),
                       (dict(query_ids="abc"), "list"),
                       (dict(query_ids=["a"], rule_ids=[]), "non-empty"),
                       (dict(query_ids=["a"], rule_ids=["nope"]), "unknown"),
                       (dict(query_ids=["a"], seed=1.5), "seed")]:
        kwargs = {"seed": 0, **bad}
        with pytest.raises(ValueError, match=match):
            assign_verifiable_principles(**kwargs)


def test_build_verifiable_principles_table():
    queries = pd.DataFrame({"query_id": ["q2", "q1", "q3"], "prompt": ["a", "b", "c"]})
    df = build_verifiable_principles(queries, seed=3)
    assert tuple(df.columns) == (*CATALOGUE_COLUMNS, "rule_id") == OUTPUT_COLUMNS
    assert df["query_id"].tolist() == ["q2", "q1", "q3"]
    assert (df["source"] == "verifiable").all()
    assert [f for f in df["features"]] == [[r] for r in df["rule_id"]]
    assert df["good_principle"].tolist() == [RULES[r].good for r in df["rule_id"]]
    single = build_verifiable_principles(queries.iloc[[2]], seed=3)
    assert single["rule_id"].tolist() == df["rule_id"].tolist()[2:]
    empty = build_verifiable_principles(queries.iloc[:0], seed=3)
    assert tuple(empty.columns) == OUTPUT_COLUMNS and len(empty) == 0
    with pytest.raises(ValueError, match="query_id"):
        build_verifiable_principles(pd.DataFrame({"prompt": ["a"]}), seed=0)


def test_render_user_turn():
    assert render_user_turn("Why?  ", " Answer in at most 40 words.") == (
        "Why?\n\nAnswer in at most 40 words.")
    with pytest.raises(ValueError, match="principle"):
        render_user_turn("Why?", " ")

"""Model-written principles: the parser table, bad-then-good writing with fallbacks and their
counts, the step with a local model (the policy itself) and with an OpenAI-compatible endpoint."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from judge_server import JudgeServer  # noqa: E402

from sso.config import SSOConfig  # noqa: E402
from sso.data.principle_writer import (  # noqa: E402
    EXAMPLES,
    OUTPUT_COLUMNS,
    generic_fallback,
    parse_guideline,
    principles_report,
    render_bad_request,
    render_good_request,
    render_principle_message,
    write_principles,
)
from sso.data.principles import FALLBACK_BAD, FALLBACK_GOOD, build_catalogue_principles  # noqa: E402
from sso.generation.sampling import GenerationParams  # noqa: E402
from steps.generate_principles import generate_principles  # noqa: E402

BAD = "Answer in vague terms, skip every concrete step and leave the main question open."
GOOD = "Answer in precise terms, give every concrete step and settle the main question."

# ------------------------------------------------------------------ parser table

PARSE_TABLE = [
    # (case, reply, polarity, expected guideline or None, reason)
    ("well-formed", f"Bad guideline: {BAD}", "bad", BAD, ""),
    ("well-formed good", f"Good guideline: {GOOD}", "good", GOOD, ""),
    ("chatter around", f"Sure! Here is one.\n\nBad guideline: {BAD}\n\nThis makes replies worse "
                       "because it hides the steps.", "bad", BAD, ""),
    ("markdown bold + quotes", f'**Bad guideline:** "{BAD}"', "bad", BAD, ""),
    ("bullet, numbered", f"- 1. bad GUIDELINE: {BAD}", "bad", BAD, ""),
    ("body on next lines", "Bad guideline:\nAnswer in vague terms,\nskip every concrete step.\n\n"
                           "Explanation: it is vague.", "bad",
     "Answer in vague terms, skip every concrete step.", ""),
    ("stops at next label", f"Bad guideline: {BAD}\nGood guideline: {GOOD}", "bad", BAD, ""),
    ("picks the asked label", f"Bad guideline: {BAD}\nGood guideline: {GOOD}", "good", GOOD, ""),
    ("stops at chatter label", f"Good guideline: {GOOD}\nNote: this mirrors the bad one.", "good",
     GOOD, ""),
    ("think block ignored", f"<think>Bad guideline: no</think>Bad guideline: {BAD}", "bad", BAD, ""),
    ("full-width colon", f"Bad guideline\uff1a{BAD}", "bad", BAD, ""),
    ("missing section", f"Good guideline: {GOOD}", "bad", None, "missing_section"),
    ("no label at all", BAD, "bad", None, "missing_section"),
    ("empty", "", "bad", None, "empty"),
    ("none", None, "bad", None, "empty"),
    ("whitespace", "  \n\t ", "good", None, "empty"),
    ("label, no body", "Bad guideline:\n\nExplanation: none", "bad", None, "empty"),
    ("garbage symbols", "Bad guideline: ???? ### !!!! 1234 5678 {{}}", "bad", None, "not_text"),
    ("gibberish tokens", "ar\n\n+-----+ suffixfectfect\x13 thereforeentienti", "bad", None,
     "missing_section"),
    ("too short", "Good guideline: Be nice.", "good", None, "too_short"),
    ("too long", "Bad guideline: " + "ramble on and on " * 60, "bad", None, "too_long"),
    ("copied example", f"Bad guideline: {EXAMPLES[0].bad}", "bad", None, "copied_example"),
]


@pytest.mark.parametrize("case, reply, polarity, expected, reason", PARSE_TABLE,
                         ids=[row[0] for row in PARSE_TABLE])
def test_parse_guideline_table(case, reply, polarity, expected, reason):
    got = parse_guideline(reply, polarity)
    assert got.guideline == expected
    assert got.reason == reason


def test_parse_rejects_unknown_polarity():
    with pytest.raises(ValueError, match="polarity"):
        parse_guideline("Bad guideline: x", "ugly")


# ------------------------------------------------------------------ prompts

def test_prompts_hold_query_examples_and_the_bad_guideline():
    bad_req = render_bad_request("How do clouds form?")
    assert bad_req.rstrip().endswith('starts with "Bad guideline:".')
    assert "Request: How do clouds form?" in bad_req
    assert all(e.bad in bad_req and e.good not in bad_req for e in EXAMPLES)
    good_req = render_good_request("How do clouds form?", BAD)
    assert f"Request: How do clouds form?\nBad guideline: {BAD}\n" in good_req
    assert all(e.good in good_req for e in EXAMPLES)
    assert len(render_bad_request("x" * 10_000)) < 10_000   # long queries are clipped in the prompt


def test_principle_message_wraps_the_guideline():
    good, bad = render_principle_message(GOOD, "good"), render_principle_message(BAD, "bad")
    assert good.startswith("Write a relatively good reply") and GOOD in good
    assert bad.startswith("Write a relatively bad reply") and BAD in bad
    assert "Never reveal" in good and "Never reveal" in bad
    with pytest.raises(ValueError):
        render_principle_message("  ", "good")


# ------------------------------------------------------------------ writing with fallbacks

class ScriptedModel:
    """A principle model whose replies are scripted per query (found in the request text)."""

    name = "scripted"

    def __init__(self, bad: dict[str, object], good: dict[str, object]):
        self.bad, self.good = bad, good
        self.calls: list[list[str]] = []
        self.closed = False

    def complete(self, user_messages, params):
        self.calls.append(list(user_messages))
        out = []
        for msg in user_messages:
            query = msg.split("\nRequest: ")[-1].split("\n")[0]
            table = self.good if 'starts with "Good guideline:"' in msg else self.bad
            out.append(table[query])
        return out

    def close(self):
        self.closed = True


QUERY_TABLE = [
    # (query, bad reply, good reply or None (not asked), expected source, expected reason)
    ("q-ok", f"Bad guideline: {BAD}", f"Good guideline: {GOOD}", "model", ""),
    ("q-chatter", f"Okay.\nBad guideline: {BAD}\nHope it helps!",
     f"Here you go:\n**Good guideline:** {GOOD}", "model", ""),
    ("q-bad-empty", "", None, "fallback", "bad_empty"),
    ("q-bad-garbage", "%%%% $$$$ ####", None, "fallback", "bad_missing_section"),
    ("q-bad-missing", f"Good guideline: {GOOD}", None, "fallback", "bad_missing_section"),
    ("q-good-missing", f"Bad guideline: {BAD}", f"Bad guideline: {BAD}", "fallback",
     "good_missing_section"),
    ("q-good-short", f"Bad guideline: {BAD}", "Good guideline: Fine.", "fallback", "good_too_short"),
    ("q-failed", RuntimeError("HTTP 503"), None, "fallback", "request_failed"),
]


@pytest.fixture()
def table_queries():
    return pd.DataFrame({"query_id": [row[0] for row in QUERY_TABLE],
                         "prompt": [row[0] for row in QUERY_TABLE]})


def test_write_principles_table_sources_and_fallback_counts(table_queries):
    model = ScriptedModel({r[0]: r[1] for r in QUERY_TABLE},
                          {r[0]: r[2] for r in QUERY_TABLE if r[2] is not None})
    fallback = build_catalogue_principles(table_queries, seed=0)
    out = write_principles(table_queries, model, GenerationParams(), fallback)

    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert list(out["query_id"]) == list(table_queries["query_id"])
    assert list(out["source"]) == [r[3] for r in QUERY_TABLE]
    assert list(out["fallback_reason"]) == [r[4] for r in QUERY_TABLE]
    # bad guidelines are requested first, for every query; good ones only where a bad one parsed
    assert len(model.calls) == 2
    assert len(model.calls[0]) == len(QUERY_TABLE)
    asked_good = [r[0] for r in QUERY_TABLE if r[2] is not None]
    assert len(model.calls[1]) == len(asked_good)
    assert all(f"Bad guideline: {BAD}" in m for m in model.calls[1])    # conditioned on the bad one

    ok = out.set_index("query_id").loc["q-ok"]
    assert ok["bad_guideline"] == BAD and ok["good_guideline"] == GOOD
    assert ok["good_principle"] == render_principle_message(GOOD, "good")
    assert ok["bad_principle"] == render_principle_message(BAD, "bad")
    fb = out[out["source"] == "fallback"].set_index("query_id")
    cat = fallback.set_index("query_id")
    for qid in fb.index:    # the query's own catalogue pair
        assert fb.loc[qid, "good_principle"] == cat.loc[qid, "good_principle"]
        assert fb.loc[qid, "bad_principle"] == cat.loc[qid, "bad_principle"]
        assert fb.loc[qid, "good_guideline"] == "" and fb.loc[qid, "bad_guideline"] == ""

    report = principles_report(out)
    assert report["n_principles"] == 8 and report["n_model"] == 2 and report["n_fallback"] == 6
    assert report["fallback_rate"] == pytest.approx(6 / 8)
    assert report["fallback_bad_empty"] == 1 and report["fallback_request_failed"] == 1
    assert report["fallback_bad_missing_section"] == 2 and report["fallback_good_too_short"] == 1
    assert out.loc[out["query_id"] == "q-chatter", "raw_bad"].item().startswith("Okay.")


def test_generic_fallback_pair(table_queries):
    model = ScriptedModel({q: "" for q in table_queries["query_id"]}, {})
    out = write_principles(table_queries, model, GenerationParams(),
                           generic_fallback(list(table_queries["query_id"])))
    assert set(out["good_principle"]) == {FALLBACK_GOOD} and set(out["bad_principle"]) == {FALLBACK_BAD}
    assert principles_report(out)["n_fallback"] == len(table_queries)
    assert len(model.calls) == 1   # nothing parsed: no good-guideline requests


def test_mostly_failed_requests_raise_instead_of_falling_back(table_queries):
    model = ScriptedModel({q: RuntimeError("down") for q in table_queries["query_id"]}, {})
    with pytest.raises(RuntimeError, match="8 of 8 requests failed"):
        write_principles(table_queries, model, GenerationParams(),
                         build_catalogue_principles(table_queries, seed=0))


def test_missing_fallback_rows_are_rejected(table_queries):
    with pytest.raises(ValueError, match="no fallback pair"):
        write_principles(table_queries, ScriptedModel({}, {}), GenerationParams(),
                         generic_fallback(["q-ok"]))


def test_catalogue_report_has_no_fallbacks():
    cat = build_catalogue_principles(pd.DataFrame({"query_id": ["a", "b"]}), seed=0)
    rep = principles_report(cat)
    assert rep["n_catalogue"] == 2 and rep["n_fallback"] == 0 and rep["n_model"] == 0


# ------------------------------------------------------------------ the step

def _cfg(**principles):
    return SSOConfig().replace(**{f"principles.{k}": v for k, v in principles.items()})


def test_step_with_injected_model_closes_nothing_it_does_not_own(table_queries):
    model = ScriptedModel({r[0]: r[1] for r in QUERY_TABLE},
                          {r[0]: r[2] for r in QUERY_TABLE if r[2] is not None})
    cfg = _cfg(source="model", fallback="generic")
    out = generate_principles(table_queries, cfg, principle_model=model)
    assert principles_report(out)["n_model"] == 2 and not model.closed
    assert set(out.loc[out["source"] == "fallback", "good_principle"]) == {FALLBACK_GOOD}


def test_step_catalogue_source_is_unchanged(table_queries):
    out = generate_principles(table_queries, _cfg().replace(**{"run.seed": 3}))
    pd.testing.assert_frame_equal(out, build_catalogue_principles(table_queries, seed=3))


def test_step_with_the_policy_as_principle_model(tiny_model_path):
    """The tiny policy writes gibberish: every pair falls back to the catalogue, and says so."""
    import torch

    queries = pd.DataFrame({"query_id": ["a", "b", "c"],
                            "prompt": ["How do clouds form?", "Name a prime.", "Write a haiku."]})
    cfg = _cfg(source="model", backend="transformers", max_new_tokens=12)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = generate_principles(queries, cfg, model_path=tiny_model_path)
    finally:
        torch.set_num_threads(threads)
    assert list(out["query_id"]) == ["a", "b", "c"]
    assert set(out["source"]) <= {"model", "fallback"}
    fb = out[out["source"] == "fallback"]
    cat = build_catalogue_principles(queries, seed=0).set_index("query_id")
    assert all(r.good_principle == cat.loc[r.query_id, "good_principle"] for r in fb.itertuples())
    assert all(r.raw_bad != "" or r.fallback_reason for r in out.itertuples())
    assert principles_report(out)["n_fallback"] == len(fb)


def test_step_without_policy_path_says_what_is_missing(table_queries):
    with pytest.raises(ValueError, match="no policy model path"):
        generate_principles(table_queries, _cfg(source="model"))


# ------------------------------------------------------------------ endpoint (OpenAI-compatible)

KEY_ENV = "SSO_TEST_PRINCIPLE_KEY"
SECRET = "sk-test-principles-0123456789"


def _endpoint_rule(user, request):
    query = user.split("\nRequest: ")[-1].split("\n")[0]
    if query == "broken":
        return "I cannot help with that."
    if 'starts with "Good guideline:"' in user:
        return f"Good guideline: For '{query}', answer in precise terms and give every step."
    return f"Bad guideline: For '{query}', answer in vague terms and skip every step."


def test_step_with_an_endpoint_retries_bounds_concurrency_and_keeps_the_key_out(monkeypatch):
    queries = pd.DataFrame({"query_id": [f"q{i}" for i in range(12)] + ["x"],
                            "prompt": [f"topic {i}" for i in range(12)] + ["broken"]})
    monkeypatch.setenv(KEY_ENV, SECRET)
    with JudgeServer(_endpoint_rule, latency_s=0.02, require_key=SECRET, model="writer") as server:
        server.inject("429", "500", "malformed", "no_choices")
        cfg = _cfg(source="model", backend="openai", model="writer", base_url=server.url,
                   api_key_env=KEY_ENV, max_concurrency=3, max_retries=4, timeout_s=10.0)
        out = generate_principles(queries, cfg)
    assert server.max_in_flight <= 3
    assert sum(server.faults_served.values()) == 4          # each fault was retried
    assert list(out["source"]) == ["model"] * 12 + ["fallback"]
    assert out["fallback_reason"].iloc[-1] == "bad_missing_section"
    assert "topic 5" in out["bad_guideline"].iloc[5] and "precise" in out["good_guideline"].iloc[5]
    assert SECRET not in out.to_json()                        # nothing of the key in the data


def test_endpoint_sampler_redacts_the_key_and_refuses_pickling(monkeypatch):
    from sso.generation.openai_sampler import EndpointError, OpenAISampler

    monkeypatch.setenv(KEY_ENV, SECRET)
    with JudgeServer(_endpoint_rule, model="writer") as server:
        server.inject("401_echo")
        sampler = OpenAISampler("writer", base_url=server.url, api_key_env=KEY_ENV, max_retries=0)
        assert SECRET not in repr(sampler) and SECRET not in str(vars(sampler))
        with pytest.raises(TypeError, match="not picklable"):
            pickle.dumps(sampler)
        out = sampler.chat([[{"role": "user", "content": "hi"}]], GenerationParams(),
                           return_exceptions=True)
        assert isinstance(out[0], EndpointError)
        assert SECRET not in str(out[0]) and "[REDACTED]" in str(out[0]) and "401" in str(out[0])
        server.inject("500")
        with pytest.raises(EndpointError, match="1 of 2 requests failed"):
            sampler.chat([[{"role": "user", "content": "hi"}]] * 2, GenerationParams())
        ok = sampler.chat([[{"role": "user", "content": "Request: topic\nBad"}]], GenerationParams())
        assert ok[0][0].text.startswith("Bad guideline:") and ok[0][0].finish_reason == "stop"
        assert sampler.usage["requests"] == 2 and sampler.usage["failed"] == 2
        assert sampler.usage["completion_tokens"] > 0
        sampler.close()


def test_endpoint_needs_the_key_variable_unless_local(monkeypatch):
    from sso.generation.openai_sampler import OpenAISampler

    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=f"environment variable {KEY_ENV}"):
        OpenAISampler("gpt-x", base_url="https://api.example.com/v1", api_key_env=KEY_ENV)
    OpenAISampler("local", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV).close()


@pytest.mark.parametrize("text, expected", [
    ("[principles]\nsource = 'model'\nbackend = 'openai'\n", "[principles] model must name"),
    ("[principles]\nsource = 'model'\nbase_url = 'http://x/v1'\n", "base_url is only used"),
    ("[principles]\nsource = 'llm'\n", "[principles] source must be one of: catalogue, model"),
    ("[principles]\napi_key_env = 'sk-abc'\n", "[principles] api_key_env must be the NAME"),
    ("[principles]\nfallback = 'none'\n", "[principles] fallback must be one of"),
    ("[sampling]\nmax_lora_rank = 4\n", "[sampling] max_lora_rank must be 0"),
    ("[data]\nn_queries = 1000\n[sampling]\nshard_size = 5\n", "gives 200 shards"),
])
def test_config_rules_for_principles_and_sampling(text, expected):
    from sso.config import ConfigError, parse_config_text

    with pytest.raises(ConfigError) as exc:
        parse_config_text(text)
    assert expected in str(exc.value)

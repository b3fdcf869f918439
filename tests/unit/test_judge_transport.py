"""The remote judge against a real local HTTP server speaking the OpenAI chat-completions API."""

from __future__ import annotations

import logging
import pickle
import secrets
import socket
import sys
import time
import traceback
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from judge_server import JudgeServer, always  # noqa: E402

from sso.config import ConfigError, SSOConfig  # noqa: E402
from sso.judge.transport import (  # noqa: E402
    BudgetExceededError,
    JudgeRequestError,
    JudgeUnavailableError,
    estimate_run,
    price_for,
)
from steps.judge import judge  # noqa: E402

KEY_ENV = "SSO_TEST_JUDGE_KEY"


@pytest.fixture
def key(monkeypatch):
    value = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_ENV, value)
    return value


def _slot_a(user: str) -> str:
    return user.split("# Reply A\n", 1)[1].split("\n\n# Reply B", 1)[0]


def prefers_marker(user: str, request: dict) -> str:
    """Prefer the reply containing GOOD; POS: always slot A; JUNK: nonsense."""
    if "JUNK" in user:
        return "I cannot decide, both are lovely."
    if "POS" in user:
        return "A"
    return "A" if "GOOD" in _slot_a(user) else "B"


def _frames(arm_answers, base_answers_, n_train=0):
    n = len(arm_answers)
    ans = pd.DataFrame({"query_id": [f"q{i}" for i in range(n)],
                        "prompt": [f"Instruction {i}" for i in range(n)], "answer": arm_answers})
    base = ans.assign(answer=base_answers_)
    train = pd.DataFrame({"query_id": [f"t{i}" for i in range(n_train)],
                          "prompt": [f"Train {i}" for i in range(n_train)],
                          "chosen": [f"GOOD chosen {i}" for i in range(n_train)],
                          "rejected": [f"weak rejected {i}" for i in range(n_train)]})
    return ans, base, train


def _cfg(tmp_path, url, **over):
    values = {"judge.backend": "openai", "judge.model": "gpt-4-1106-preview", "judge.base_url": url,
              "judge.api_key_env": KEY_ENV, "judge.cache_dir": str(tmp_path / "cache"),
              "judge.accuracy_pairs": 3, "judge.max_retries": 4, "judge.timeout_s": 5.0,
              "judge.max_concurrency": 4}
    values.update(over)
    return SSOConfig().replace(**values)


def test_both_orders_scored_and_cached_rerun_makes_zero_requests(tmp_path, key):
    arm = ["GOOD a", "weak b", "POS c", "JUNK d", "GOOD e"]
    base = ["weak a", "GOOD b", "POS c2", "meh d", "weak e"]
    ans, base_df, train = _frames(arm, base, n_train=4)
    with JudgeServer(prefers_marker, require_key=key) as server:
        out = judge("sso", ans, base_df, train, _cfg(tmp_path, server.url), progress=False)
        asked = list(server.user_messages)
        assert server.requests == 2 * (5 + 3)
        # both orders: every (instruction, x, y) was asked as (x, y) and as (y, x)
        shown = {(u.split("\n")[1], _slot_a(u)) for u in asked}
        for i, (a, b) in enumerate(zip(arm, base)):
            assert (f"Instruction {i}", a) in shown and (f"Instruction {i}", b) in shown
        m = out["metrics"]
        assert (m["wins"], m["losses"], m["ties"], m["unparsable"], m["n_eval"]) == (2, 1, 1, 1, 5)
        assert m["win_rate"] == pytest.approx((2 + 0.5) / 4)
        assert m["pref_accuracy"] == 1.0 and m["pref_accuracy_n"] == 3 and m["pref_unparsable"] == 0
        pairs = out["pairs"].set_index(["kind", "query_id"])["outcome"]
        assert pairs[("win_rate", "q0")] == "win" and pairs[("win_rate", "q1")] == "loss"
        assert pairs[("win_rate", "q2")] == "tie" and pairs[("win_rate", "q3")] == "unparsable"
        j = out["judgments"]
        junk = j[j["query_id"] == "q3"]
        assert (junk["preferred"] == "unparsable").all() and junk["verdict"].isna().all()
        assert (junk["raw"] == "I cannot decide, both are lovely.").all()
        assert (j.loc[j["query_id"] != "q3", "source"] == "logprobs").all()
        u = out["usage"]
        assert u["requests"] == 16 and u["cache_hits"] == 0 and u["prompt_tokens"] > 0
        assert u["completion_tokens"] > 0 and u["est_cost_usd"] > 0

        before = server.requests
        again = judge("sso", ans, base_df, train, _cfg(tmp_path, server.url), progress=False)
        assert server.requests == before                      # 0 requests on the rerun
        assert again["usage"]["requests"] == 0 and again["usage"]["cache_hits"] == 16
        assert again["judgments"]["cached"].all()
        assert again["metrics"] == m


def test_logprobs_decide_where_given_else_text(tmp_path, key):
    def rule(user, request):   # the text says B but the label log-probs say A
        return {"text": "B", "top_logprobs": {"A": -0.1, "B": -2.4, "The": -5.0}}
    ans, base, train = _frames(["x"], ["y"])
    with JudgeServer(rule) as server:
        out = judge("sso", ans, base, train, _cfg(tmp_path, server.url), progress=False)
    j = out["judgments"]
    assert (j["verdict"] == "A").all() and (j["source"] == "logprobs").all()
    assert j["logprob_a"].tolist() == pytest.approx([-0.1, -0.1])

    with JudgeServer(rule, logprobs=False) as server:   # endpoint returns no logprobs
        out = judge("sso", ans, base, train, _cfg(tmp_path / "2", server.url), progress=False)
    assert (out["judgments"]["verdict"] == "B").all() and (out["judgments"]["source"] == "text").all()

    with JudgeServer(always("A"), reject_logprobs=True) as server:   # HTTP 400 on logprobs
        out = judge("sso", ans, base, train, _cfg(tmp_path / "3", server.url), progress=False)
    assert (out["judgments"]["verdict"] == "A").all() and (out["judgments"]["source"] == "text").all()


def test_injected_faults_are_retried_and_no_judgment_is_lost(tmp_path, key):
    n = 6
    ans, base, train = _frames([f"GOOD {i}" for i in range(n)], [f"weak {i}" for i in range(n)], 2)
    with JudgeServer(prefers_marker, slow_s=1.5) as server:
        faults = ["429", "500", "429", "503", "malformed", "slow", "no_choices", "500", "malformed"]
        server.inject(*faults)
        t0 = time.monotonic()
        out = judge("sso", ans, base, train,
                    _cfg(tmp_path, server.url, **{"judge.timeout_s": 0.5, "judge.max_concurrency": 3}),
                    progress=False)
        elapsed = time.monotonic() - t0
        assert sum(server.faults_served.values()) == len(faults)
        assert server.requests == 2 * (n + 2) + len(faults)
    j = out["judgments"]
    assert len(j) == 2 * (n + 2) and j["verdict"].notna().all()
    assert out["metrics"]["wins"] == n and out["metrics"]["unparsable"] == 0
    assert out["metrics"]["pref_accuracy"] == 1.0
    assert out["usage"]["requests"] == 2 * (n + 2)
    assert out["usage"]["http_attempts"] == 2 * (n + 2) + len(faults)
    assert elapsed < 20


def test_nonsense_verdicts_are_counted_unparsable(tmp_path, key):
    ans, base, train = _frames(["GOOD x", "GOOD y"], ["weak x", "weak y"])
    with JudgeServer(prefers_marker) as server:
        server.inject("nonsense")     # the first request gets a nonsense reply
        out = judge("sso", ans, base, train,
                    _cfg(tmp_path, server.url, **{"judge.max_concurrency": 1}), progress=False)
    m = out["metrics"]
    assert (m["wins"], m["unparsable"], m["losses"], m["ties"]) == (1, 1, 0, 0)
    assert m["win_rate"] == 1.0


def test_bounded_concurrency(tmp_path, key):
    n = 12
    ans, base, train = _frames([f"a{i}" for i in range(n)], [f"b{i}" for i in range(n)])
    with JudgeServer(always("A"), latency_s=0.05) as server:
        judge("sso", ans, base, train, _cfg(tmp_path, server.url, **{"judge.max_concurrency": 3}),
              progress=False)
        assert server.max_in_flight == 3


def test_api_key_never_in_results_logs_or_errors(tmp_path, key, caplog):
    caplog.set_level(logging.DEBUG)
    ans, base, train = _frames(["GOOD x", "y"], ["weak x", "GOOD y"], 2)
    with JudgeServer(prefers_marker, require_key=key) as server:
        out = judge("sso", ans, base, train, _cfg(tmp_path, server.url), progress=False)
        blob = pickle.dumps(out)
        assert key.encode() not in blob and key[8:].encode() not in blob
        assert out["metrics"]["wins"] == 1
        # a server that quotes the Authorization header back in its error message
        server.inject("401_echo")
        with pytest.raises(JudgeRequestError) as err:
            judge("sso", ans.assign(answer=["new", "new2"]), base, train,
                  _cfg(tmp_path, server.url, **{"judge.max_concurrency": 1}), progress=False)
    text = "".join(traceback.format_exception(err.value))
    assert KEY_ENV in str(err.value) and "[REDACTED]" in str(err.value)
    assert key not in text and key not in repr(err.value)
    # unreachable endpoint: the error names the endpoint, not the key
    with pytest.raises(JudgeUnavailableError) as err2:
        judge("sso", ans, base, train, _cfg(tmp_path / "x", _dead_url(), **{"judge.max_retries": 1}),
              progress=False)
    assert key not in "".join(traceback.format_exception(err2.value))
    assert caplog.records, "expected some log records to inspect"
    for rec in caplog.records:
        assert key not in rec.getMessage()
        assert key not in str(rec.args)


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_unreachable_endpoint_fails_fast_and_clearly(tmp_path, key):
    ans, base, train = _frames([f"a{i}" for i in range(20)], [f"b{i}" for i in range(20)])
    url = _dead_url()
    t0 = time.monotonic()
    with pytest.raises(JudgeUnavailableError, match=r"unreachable after 2 attempts") as err:
        judge("sso", ans, base, train, _cfg(tmp_path, url, **{"judge.max_retries": 1}), progress=False)
    assert url in str(err.value) and "resume" in str(err.value)
    assert time.monotonic() - t0 < 10          # no new request starts once one has failed for good


def test_endpoint_down_mid_run_then_back_asks_only_the_rest(tmp_path, key):
    n = 8
    ans, base, train = _frames([f"GOOD {i}" for i in range(n)], [f"weak {i}" for i in range(n)])
    cfg = _cfg(tmp_path, "", **{"judge.max_retries": 1, "judge.max_concurrency": 1})
    with JudgeServer(prefers_marker) as server:
        cfg = cfg.replace(**{"judge.base_url": server.url})
        orig = server.rule

        def rule(user, request):
            if len(server.user_messages) >= 5:
                server.down = True          # answered 5, then the endpoint goes down
            return orig(user, request)
        server.rule = rule
        with pytest.raises(JudgeUnavailableError, match="HTTP 503"):
            judge("sso", ans, base, train, cfg, progress=False)
        server.down = False
        server.rule = orig
        before = server.requests
        out = judge("sso", ans, base, train, cfg, progress=False)
        assert server.requests - before == 2 * n - 5
        assert out["usage"]["cache_hits"] == 5 and out["metrics"]["wins"] == n


def test_budget_guard_refuses_with_the_estimate(tmp_path, key):
    ans, base, train = _frames([f"a{i}" for i in range(5)], [f"b{i}" for i in range(5)], 4)
    with JudgeServer(always("A")) as server:
        with pytest.raises(BudgetExceededError) as err:
            judge("sso", ans, base, train, _cfg(tmp_path, server.url, **{"judge.max_requests": 10}),
                  progress=False)
        msg = str(err.value)
        assert "16 uncached requests" in msg and "max_requests = 10" in msg and "$" in msg
        with pytest.raises(BudgetExceededError, match=r"~\$0\.\d\d .*max_cost_usd = 1e-05"):
            judge("sso", ans, base, train, _cfg(tmp_path, server.url, **{"judge.max_cost_usd": 1e-5}),
                  progress=False)
        assert server.requests == 0
        out = judge("sso", ans, base, train, _cfg(tmp_path, server.url, **{"judge.max_requests": 16}),
                    progress=False)
        assert out["usage"]["requests"] == 16
        # cached judgments cost nothing: a rerun passes even a budget of one request
        judge("sso", ans, base, train, _cfg(tmp_path, server.url, **{"judge.max_requests": 1}),
              progress=False)


def test_missing_key_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    ans, base, train = _frames(["x"], ["y"])
    with pytest.raises(ConfigError, match=KEY_ENV) as err:
        judge("sso", ans, base, train, _cfg(tmp_path, "https://judge.example.invalid/v1"),
              progress=False)
    assert "not set" in str(err.value)
    with JudgeServer(always("B")) as server:   # a loopback endpoint needs no key
        out = judge("sso", ans, base, train, _cfg(tmp_path, server.url), progress=False)
    assert out["metrics"]["ties"] == 1   # "always B" flips with the order: a tie


def test_price_table_and_estimate():
    assert price_for("gpt-4-1106-preview")[:2] == (10.0, 30.0)
    assert price_for("gpt-4o-mini-2024-07-18")[2] == "gpt-4o-mini"
    assert price_for("gpt-4-0613")[2] == "gpt-4"
    assert price_for("my-local-model")[2] == "default"
    est = estimate_run([[{"role": "user", "content": "x" * 400}]], "gpt-4-1106-preview")
    assert est["requests"] == 1 and est["prompt_tokens"] >= 100
    assert est["cost_usd"] == pytest.approx((est["prompt_tokens"] * 10 + est["completion_tokens"] * 30) / 1e6)


def test_judge_holds_the_key_only_in_its_client(tmp_path, key):
    from sso.judge.transport import OpenAIJudge

    jcfg = _cfg(tmp_path, "https://judge.example.invalid/v1").judge
    judge_ = OpenAIJudge(jcfg)
    assert judge_.client.api.api_key == key                  # the one place the key is held
    held = {name: value for name, value in vars(judge_).items() if name != "client"}
    assert key not in str(held) and key not in repr(judge_) and key not in repr(judge_.client)
    assert key not in str(vars(judge_.client))
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(judge_)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(judge_.client)
    assert judge_.client.redact(f"echo Bearer {key}.") == "echo Bearer [REDACTED]."


def test_requests_that_fail_for_good_are_tolerated_up_to_max_failed_fraction(tmp_path, key):
    def refuses_some(user, request):   # instructions 3 and 7 are refused for good (HTTP 400)
        if "Instruction 3\n" in user or "Instruction 7\n" in user:
            return {"status": 400, "message": "content policy"}
        return prefers_marker(user, request)

    ans, base, train = _frames([f"GOOD {i}" for i in range(10)], [f"weak {i}" for i in range(10)])
    with JudgeServer(refuses_some) as server:
        with pytest.raises(Exception, match=r"request\(s\) failed") as strict:
            judge("sso", ans, base, train, _cfg(tmp_path, server.url, **{"judge.accuracy_pairs": 0}),
                  progress=False)
        assert "HTTP 400" in str(strict.value)
        with pytest.raises(Exception, match=r"4 of \d+ judge requests failed for good.*max_failed_fraction = 0.1"):
            judge("sso", ans, base, train, _cfg(tmp_path, server.url, **{"judge.accuracy_pairs": 0,
                                                                          "judge.max_failed_fraction": 0.1}),
                  progress=False)
        asked = server.requests
        out = judge("sso", ans, base, train, _cfg(tmp_path, server.url, **{"judge.accuracy_pairs": 0,
                                                                            "judge.max_failed_fraction": 0.25}),
                    progress=False)
    j, m = out["judgments"], out["metrics"]
    failed = j[j["preferred"] == "failed"]
    assert sorted(failed["query_id"].unique()) == ["q3", "q7"] and len(failed) == 4
    assert failed["error"].str.contains("HTTP 400").all() and (j.loc[j["preferred"] != "failed", "error"] == "").all()
    assert m["failed"] == 2 and m["wins"] == 8 and m["win_rate"] == 1.0     # never scored, never a loss
    assert out["usage"]["failed_requests"] == 4
    assert server.requests - asked == 4                                     # the answered 16 came from the cache
    assert key not in j.to_json()

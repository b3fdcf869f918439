"""Principle requests are cached in the flow's datastore: a retried generate_principles attempt asks
the principle endpoint only for what the failed attempt did not get, and a later run (a fresh
process, no local cache; as a resumed run on another machine) asks nothing at all.

The endpoint (a real HTTP server on 127.0.0.1) answers the first N distinct requests, then refuses
every new one for good (HTTP 400) until a refused request comes back, which marks the retry: the
first attempt gets N answers and fails (more than half of its requests failed), the retry finds
the N answers in ``<datastore>/SSOFlow/sso-cache/principles/`` and asks the rest. Runs stop after
generate_principles (``SSO_FAIL_AT_STEP=sample_responses``).
"""

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import FLOW, datastore_cache_entries  # noqa: E402
from judge_server import JudgeServer  # noqa: E402

pytestmark = [pytest.mark.flow, pytest.mark.slow]
N = 3
REPLY = ("Bad guideline: Answer with vague filler and avoid every concrete detail the user needs.\n"
         "Good guideline: Answer with precise, concrete details and the steps the user needs.")

CONFIG = """
[data]
n_queries = 6
n_eval = 2
[sampling]
shards = 1
[principles]
source = "model"
backend = "openai"
model = "writer-test"
base_url = "{url}"
max_retries = 0
max_concurrency = 1     # one request at a time: the order the server sees is the order asked
timeout_s = 10.0
"""


def test_principle_retry_and_rerun_ask_only_what_is_missing(mf_env):
    from metaflow import Runner

    lock = threading.Lock()
    state = {"retry": False}
    answered: list[str] = []
    refused: set[str] = set()
    asked: list[str] = []

    def rule(user_message, request):
        with lock:
            asked.append(user_message)
            if user_message in refused:
                state["retry"] = True              # a refused request came back: the retry
            elif len(answered) >= N and not state["retry"]:
                refused.add(user_message)
                return {"status": 400, "message": "refused by the test"}
            assert user_message not in answered, "a request answered before was asked again"
            answered.append(user_message)
            return REPLY

    root = mf_env["root"]
    cfg = root / "principles.toml"
    env = {**mf_env["env"], "SSO_FAIL_AT_STEP": "sample_responses"}
    with JudgeServer(rule) as server:
        cfg.write_text(CONFIG.format(url=server.url))
        with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=env, config=[("cfg", str(cfg))]) as runner:
            first = runner.run()
        (task,) = list(first.run["generate_principles"])
        assert task.successful and task.current_attempt == 1, first.stderr[-3000:]
        assert "requests failed" in _attempt_log(task, 0)         # attempt 0 failed with the count
        principles = task["shard_principles"].data
        assert (principles["source"] == "model").all()            # nothing fell back
        total = len(set(asked))
        assert total == 2 * len(principles) and len(answered) == total == len(set(answered))
        assert len(asked) == total + len(refused)                 # the retry asked only the rest

        n_before = len(asked)
        with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=env, config=[("cfg", str(cfg))]) as runner:
            again = runner.run()
        (task2,) = list(again.run["generate_principles"])
        assert task2.successful and task2.current_attempt == 0
        assert len(asked) == n_before                             # a new run asks nothing
        assert task2["shard_principles"].data.equals(principles)
    assert datastore_cache_entries(root, "principles") == total


def _attempt_log(task, attempt: int) -> str:
    from metaflow import Task

    t = Task(task.pathspec, attempt=attempt)
    return t.stdout + t.stderr

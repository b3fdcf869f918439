"""The judge cache lives in the flow's datastore: a retried judge attempt (a fresh process with no
local cache, as on a new container) asks the endpoint only for what the failed attempt did not get.

The endpoint answers the first N distinct questions, then refuses every question for good (HTTP
400, no client retry) until a refused one comes back: the first attempt ends with N answered and
fails (the tolerance ``[judge] max_failed_fraction`` is 0); Metaflow's ``@retry`` starts a new attempt in a new
process, which finds the N answers in ``<datastore>/SSOFlow/sso-cache/judge/`` and asks the rest.
Requests are counted at the server.
"""

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import FLOW, datastore_cache_entries, local_judge_entries  # noqa: E402
from judge_server import JudgeServer  # noqa: E402

pytestmark = [pytest.mark.flow, pytest.mark.slow]
N = 5

CONFIG = """
[data]
n_queries = 8
n_eval = 4
[sampling]
max_new_tokens = 12
shards = 1
[generator]
epochs = 1
[policy]
arms = ["sso"]
epochs = 1
[eval]
max_new_tokens = 12
[judge]
backend = "openai"
model = "judge-test"
base_url = "{url}"
max_retries = 0
max_concurrency = 1     # one request at a time: the order the server sees is the order asked
timeout_s = 10.0
accuracy_pairs = 4
"""



def test_judge_retry_asks_only_the_rest(mf_env):
    from metaflow import Runner

    lock = threading.Lock()
    answered: list[str] = []           # distinct questions answered, in order
    refused: set[str] = set()
    asked: list[str] = []
    retry_from: list[int] = []         # index in `asked` where the retry began

    def rule(user_message, request):
        with lock:
            if user_message in refused and not retry_from:
                retry_from.append(len(asked))      # a refused question came back: the retry
            asked.append(user_message)
            if len(answered) >= N and not retry_from:
                refused.add(user_message)          # refused for good, in the first attempt
                return {"status": 400, "message": "refused by the test"}
            assert user_message not in answered, "a question answered before was asked again"
            answered.append(user_message)
            return "A"

    root = mf_env["root"]
    cfg = root / "judge-retry.toml"
    before_local = local_judge_entries()
    with JudgeServer(rule) as server:
        cfg.write_text(CONFIG.format(url=server.url))
        with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=mf_env["env"],
                    config=[("cfg", str(cfg))]) as runner:
            done = runner.run()
        assert done.status == "successful", done.stderr[-3000:]
        run = done.run

    (task,) = list(run["judge"])
    assert task.current_attempt == 1                         # the first attempt failed, the retry did it
    total = len(set(asked))                                  # distinct questions of the judge step
    first, retry = asked[:retry_from[0]], asked[retry_from[0]:]
    assert len(answered) == total == len(set(answered))      # each question answered exactly once
    assert set(first) - set(answered[:N]) == refused         # attempt 0: N answered, the rest refused
    # the retry asked only what attempt 0 did not get answered (whether it failed or was never
    # sent before the attempt gave up), each question once
    assert sorted(retry) == sorted(set(asked) - set(answered[:N]))
    usage = run.data.results.iloc[0]
    assert int(usage.judge_requests) == total - N           # what the successful attempt asked
    rows = 2 * (4 + 4)                                       # (eval + accuracy pairs) x both orders
    assert int(usage.judge_cache_hits) == rows - (total - N)  # the N from the datastore (+ repeats)
    # everything is in the datastore, nothing in a local cache directory
    assert datastore_cache_entries(root, "judge") == total
    assert local_judge_entries() == before_local

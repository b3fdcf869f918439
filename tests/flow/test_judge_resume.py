"""The judge endpoint goes down mid-run; the judge step fails after its retries; the endpoint comes
back; `resume` finishes the run without recomputing earlier steps and without re-asking a single
prompt that was already answered. No local cache directory is configured: the answers persist in
the flow's datastore (``<datastore>/SSOFlow/sso-cache/judge/``), which a resumed run on any machine
reads, and nothing is written to a local cache."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import FLOW, datastore_cache_entries, local_judge_entries  # noqa: E402
from judge_server import JudgeServer  # noqa: E402

pytestmark = [pytest.mark.flow, pytest.mark.slow]
ANSWERED_BEFORE_OUTAGE = 6

CONFIG = """
[data]
n_queries = 8
n_eval = 4
[sampling]
backend = "transformers"
max_new_tokens = 16
shards = 2
[generator]
epochs = 1
[policy]
epochs = 1
[eval]
max_new_tokens = 16
[judge]
backend = "openai"
model = "judge-test"
base_url = "{url}"
max_retries = 1
timeout_s = 5.0
accuracy_pairs = 4
"""


def test_judge_outage_then_resume_reasks_nothing(mf_env):
    from metaflow import Runner

    answered: list[str] = []
    server = JudgeServer()

    def rule(user_message, request):          # answers normally, then the endpoint goes down
        answered.append(user_message)
        if len(answered) == ANSWERED_BEFORE_OUTAGE:
            server.down = True
        return "A"

    server.rule = rule
    root = mf_env["root"]
    cfg = root / "judge-outage.toml"
    cfg.write_text(CONFIG.format(url=server.url))
    before_local = local_judge_entries()
    with server:
        with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=mf_env["env"],
                    config=[("cfg", str(cfg))]) as runner:
            failed = runner.run()
        assert failed.status == "failed"
        origin = failed.run
        # requests already in flight when the switch flipped may still have been answered
        answered_before = len(answered)
        assert answered_before >= ANSWERED_BEFORE_OUTAGE
        judge_tasks = list(origin["judge"])
        assert judge_tasks and not any(t.successful for t in judge_tasks)
        assert any("127.0.0.1" in t.stderr for t in judge_tasks)   # the error names the endpoint

        server.down = False                      # the endpoint comes back
        with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=mf_env["env"]) as runner:
            resumed = runner.resume(origin_run_id=origin.id)
        assert resumed.status == "successful", resumed.stderr[-3000:]
        run = resumed.run

    for name in ("sample_responses", "train_generator", "train_policy", "generate_answers"):
        assert all(t.origin_pathspec is not None for t in run[name]), f"{name} was recomputed"
    assert all(t.origin_pathspec is None for t in run["judge"])
    before, after = answered[:answered_before], answered[answered_before:]
    assert not set(before) & set(after), "a prompt answered before the outage was asked again"
    results = run.data.results
    # every answer from before the outage was a cache hit (the two arms may also share prompts:
    # with one epoch on eight pairs the two policies barely move, so their answers can coincide)
    assert int(results.judge_cache_hits.sum()) >= answered_before
    per_arm = 2 * (4 + 4)        # (eval pairs + accuracy pairs) x both orders
    assert int(results.judge_cache_hits.sum() + results.judge_requests.sum()) == 2 * per_arm
    assert set(after)            # the resumed judge did ask the endpoint for what was missing
    assert (results.unparsable == 0).all()
    assert datastore_cache_entries(root, "judge") == len(set(answered))
    assert local_judge_entries() == before_local


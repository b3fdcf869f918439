"""A machine lost mid-training, then ``resume``: the resumed run continues from the origin run's last
checkpoint (same fingerprint) instead of retraining, and ends with the very adapter an
uninterrupted run trains.

The origin run's runtime and its train_generator task are SIGKILLed after checkpoint K (test hook
``SSO_KILL_AFTER_CHECKPOINT``: no retry, no cleanup, as when a node disappears). The resumed run
clones the steps before training, finds the checkpoint through ``@datastore_checkpoints``'s origin
roots, and runs only the remaining optimizer steps. Runs stop after train_generator
(``SSO_FAIL_AT_STEP=generate_preferences``) to keep the test short.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import FLOW, client_for  # noqa: E402

pytestmark = [pytest.mark.flow, pytest.mark.slow]
K = 3

CONFIG = """
[data]
n_queries = 8
n_eval = 2
[sampling]
max_new_tokens = 12
shards = 1
[generator]
epochs = 2
batch_size = 2
log_every = 1
checkpoint_every = 1
[policy]
arms = ["sso"]
"""


def _config(raw: bytes) -> dict:
    import json

    cfg = json.loads(raw)
    return {**cfg, "target_modules": sorted(cfg.get("target_modules") or [])}


def _generator_task(run):
    (task,) = list(run["train_generator"])
    return task


def test_resume_continues_from_the_origin_checkpoint(mf_env):
    from metaflow import Flow, Runner

    root = mf_env["root"]
    cfg = root / "resume-train.toml"
    cfg.write_text(CONFIG)
    env = {**mf_env["env"], "TMPDIR": str(root)}          # checkpoints under <tmp>/sso-checkpoints
    stop = {"SSO_FAIL_AT_STEP": "generate_preferences"}

    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env={**env, **stop,
                "SSO_KILL_AFTER_CHECKPOINT": f"train_generator:{K}"}, config=[("cfg", str(cfg))]) as runner:
        runner.run()
    client_for(root)
    origin = Flow("SSOFlow").latest_run
    assert not origin.finished
    killed = _generator_task(origin)
    assert not killed.successful          # (its log died with the runtime, which saves task logs)
    left = list((root / "sso-checkpoints" / "SSOFlow" / origin.id / "train_generator").glob("*/*/step-*"))
    assert [p.name for p in left] == [f"step-{K:08d}"]         # the last checkpoint survived the kill

    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env={**env, **stop}) as runner:
        resumed = runner.resume(origin_run_id=origin.id)
    run = resumed.run
    for name in ("load_queries", "generate_principles", "sample_responses", "join_samples"):
        assert all(t.origin_pathspec is not None for t in run[name]), f"{name} was recomputed"
    task = _generator_task(run)
    assert task.successful and task.origin_pathspec is None
    summary = task["generator_summary"].data
    assert summary["resumed_from_step"] == K
    assert "origin run's checkpoint" in summary["checkpoint_note"]
    assert summary["steps_run"] == summary["steps"] - K > 0       # only the remaining steps ran
    assert list(task["generator_history"].data["step"]) == list(range(1, summary["steps"] + 1))

    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env={**env, **stop},
                config=[("cfg", str(cfg))]) as runner:
        runner.run()
    straight = _generator_task(Flow("SSOFlow").latest_run)
    plain = straight["generator_summary"].data
    assert "resumed_from_step" not in plain and plain["steps_run"] == plain["steps"] == summary["steps"]
    a, b = straight["generator_adapter"].data, task["generator_adapter"].data
    assert a.keys() == b.keys()
    for name in a:          # weights byte for byte; the config up to the order peft writes a set in
        assert (a[name] == b[name]) if not name.endswith(".json") else _config(a[name]) == _config(b[name])
    history = ["step", "loss", "learning_rate"]
    assert (straight["generator_history"].data[history].values
            == task["generator_history"].data[history].values).all()

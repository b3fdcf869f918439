"""``[run] mode = "online"``: the earlier, iterative SSO as a self-looping step. Two iterations
on the tiny model: each iteration's data, policy and metrics are artifacts; iteration 2 starts from
iteration 1's policy, which is also its reference; a failure injected in iteration 2 is resumed
at iteration 2, iteration 1 cloned."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

FLOW = str(Path(__file__).resolve().parents[2] / "flows" / "sso_online_flow.py")
pytestmark = [pytest.mark.flow, pytest.mark.slow]

CONFIG = """
[run]
mode = "online"
iterations = 2
[data]
n_queries = 8
n_eval = 4
[sampling]
backend = "transformers"
max_new_tokens = 12
shards = 2
[policy]
arms = ["pbaa"]
epochs = 1
batch_size = 4
[eval]
max_new_tokens = 12
[judge]
accuracy_pairs = 4
"""


def _sha(adapter):
    h = hashlib.sha256()
    for name in sorted(adapter):
        h.update(name.encode() + b"\0" + adapter[name])
    return h.hexdigest()


def test_two_online_iterations_then_resume_in_the_second(mf_env):
    from metaflow import Runner

    cfg = mf_env["root"] / "online.toml"
    cfg.write_text(CONFIG + f'cache_dir = "{mf_env["root"] / "judge"}"\n')
    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env={**mf_env["env"], "SSO_FAIL_AT_STEP": "online_iteration@2"},
                config=[("cfg", str(cfg))]) as runner:
        failed = runner.run()
    assert failed.status == "failed"
    origin = failed.run
    tasks = sorted(origin["online_iteration"], key=lambda t: int(t.id))
    assert [t.successful for t in tasks] == [True, False]      # iteration 1 done, iteration 2 failed
    assert "online_iteration@2: injected failure" in tasks[1].stderr
    first = tasks[0].data

    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=mf_env["env"]) as runner:
        resumed = runner.resume(origin_run_id=origin.id)
    assert resumed.status == "successful", resumed.stderr[-5000:]
    run = resumed.run
    iters = sorted(run["online_iteration"], key=lambda t: int(t.id))
    assert len(iters) == 2
    assert iters[0].origin_pathspec == tasks[0].pathspec        # iteration 1 cloned, not retrained
    assert iters[1].origin_pathspec is None

    last = iters[1].data
    assert last.iteration == 2 and len(last.online_policies) == 2
    assert last.online_policies[0] == first.online_policies[0]
    s1, s2 = last.online_summaries
    assert (s1["iteration"], s2["iteration"]) == (1, 2) and s2["objective"] == "online_sso"
    assert s1["init_adapter_sha256"] == "" and s2["init_adapter_sha256"] == _sha(first.online_policies[0])
    # the reference of iteration 2 is its start (iteration 1's policy): at its first step the
    # policy equals the reference, so every reward is zero; iteration 2 trained on new samples
    h2 = last.online_histories[1]
    np.testing.assert_allclose(h2[["main_rewards_chosen", "main_rewards_rejected"]].iloc[0], 0.0, atol=1e-6)
    assert last.online_policies[1] != last.online_policies[0]
    d1, d2 = last.online_training_data
    assert list(d1["query_id"]) and set(d2["query_id"]) <= set(d1["query_id"])
    assert not d1.set_index("query_id")["y_plus"].reindex(d2["query_id"]).equals(d2.set_index("query_id")["y_plus"])
    assert last.online_sampling_reports[0]["iteration"] == 2

    results = run.data.results.set_index("arm")
    assert list(results.index) == ["pbaa", "online_it1", "online_it2"]
    assert results.loc["online_it2", "iteration"] == 2
    assert results.loc["online_it2", "train_seconds"] > results.loc["online_it1", "train_seconds"] > 0
    assert run.data.policy_adapters["online_it1"] == first.online_policies[0]


def test_iterative_published_sso_retrains_generator_and_policy_from_the_last_policy(mf_env):
    from metaflow import Runner

    cfg = mf_env["root"] / "iterative.toml"
    cfg.write_text(CONFIG.replace('mode = "online"', 'mode = "iterative"')
                   + f'cache_dir = "{mf_env["root"] / "judge"}"\n')
    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=mf_env["env"], config=[("cfg", str(cfg))]) as runner:
        result = runner.run()
        assert result.status == "successful", result.stderr[-5000:]
        run = result.run
    last = max(run["online_iteration"], key=lambda t: int(t.id)).data
    assert len(last.online_generators) == len(last.online_policies) == len(last.online_generator_histories) == 2
    assert all(len(h) > 0 and h["loss"].notna().all() for h in last.online_generator_histories)
    s1, s2 = last.online_summaries
    assert s1["objective"] == s2["objective"] == "dpo" and s2["generator_seconds"] > 0
    assert s2["init_adapter_sha256"] == _sha(last.online_policies[0])     # both stages start from policy 1
    pairs1, pairs2 = last.online_training_data                            # the generators' pairs
    assert {"chosen", "rejected"} <= set(pairs1.columns) and len(pairs2) > 0
    assert last.online_generators[0] != last.online_generators[1]
    results = run.data.results.set_index("arm")
    assert list(results.index) == ["pbaa", "online_it1", "online_it2"]
    assert results.loc["online_it2", "generator_seconds"] > results.loc["online_it1", "generator_seconds"] > 0

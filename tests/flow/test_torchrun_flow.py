"""Data-parallel training inside the flow: with ``[resources.train] processes = 2`` the generator
and policy steps train under torchrun (DDP, gloo on CPU) and log the same loss curves as the
single-process run of the same config; the rank-0 adapters then sample and are judged."""

from pathlib import Path

import numpy as np
import pytest

FLOW = str(Path(__file__).resolve().parents[2] / "flows" / "sso_flow.py")
pytestmark = [pytest.mark.flow, pytest.mark.slow]

CONFIG = """
[data]
n_queries = 8
n_eval = 4
[sampling]
backend = "transformers"
max_new_tokens = 12
shards = 1
[generator]
epochs = 2
batch_size = 4
[policy]
arms = ["sso"]
epochs = 2
batch_size = 4
[eval]
max_new_tokens = 12
[judge]
accuracy_pairs = 4
[resources.train]
processes = {processes}
"""


def _run(mf_env, processes):
    from metaflow import Runner

    cfg = mf_env["root"] / f"ddp{processes}.toml"
    cfg.write_text(CONFIG.format(processes=processes))
    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=mf_env["env"], config=[("cfg", str(cfg))]) as runner:
        result = runner.run()
        assert result.status == "successful", result.stderr[-5000:]
        return result.run.data


def test_two_processes_under_torchrun_give_the_single_process_loss_curves(mf_env):
    one, two = _run(mf_env, 1), _run(mf_env, 2)
    assert two.generator_summary["processes"] == 2 and "processes" not in one.generator_summary
    assert two.policy_summaries["sso"]["processes"] == 2
    for a, b in ((one.generator_history, two.generator_history),
                 (one.policy_histories["sso"], two.policy_histories["sso"])):
        assert len(a) == len(b) >= 4
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4)
        assert not np.allclose(a["loss"], a["loss"].iloc[0])            # the loss moved
    assert len(two.sso_pairs) == len(one.sso_pairs)
    assert two.results.loc[0, "n_eval"] == one.results.loc[0, "n_eval"] == 4

"""Arms as data: loss variants of the SSO pairs beside sso and pbaa, one foreach branch each."""

from pathlib import Path

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
epochs = 1
[policy]
arms = ["sso", "pbaa", "sso_ipo", "sso_simpo"]
epochs = 1
[eval]
max_new_tokens = 12
[judge]
accuracy_pairs = 4
"""


def test_every_arm_is_a_row_trained_with_its_loss_on_its_pairs(mf_env):
    from metaflow import Runner

    from sso.arms import ARMS

    cfg = mf_env["root"] / "arms.toml"
    cfg.write_text(CONFIG + f'cache_dir = "{mf_env["root"] / "judge"}"\n')
    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=mf_env["env"], config=[("cfg", str(cfg))]) as runner:
        result = runner.run()
        assert result.status == "successful", result.stderr[-5000:]
        run = result.run
    data = run.data
    results = data.results.set_index("arm")
    assert list(results.index) == ["sso", "pbaa", "sso_ipo", "sso_simpo"]
    for arm, summary in data.policy_summaries.items():
        assert summary["loss_type"] == (ARMS[arm].loss or "dpo"), arm
    by_arm = {t.data.arm: t.data for t in run["train_policy"]}
    for arm in ("sso_ipo", "sso_simpo"):       # the same pairs as the sso arm, another objective
        assert by_arm[arm].n_pairs == len(data.sso_pairs)
        assert data.policy_adapters[arm] != data.policy_adapters["sso"]
        assert 0.0 <= results.loc[arm, "h2h_vs_sso"] <= 1.0
    assert by_arm["pbaa"].n_pairs == len(data.pbaa_pairs)

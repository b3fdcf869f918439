"""Arms as data: every arm of the method family in one run, one foreach branch and one results row
each, each trained on data traceable to its source; the ablation generators' losses are exactly
the terms of the SSO loss they keep."""

from pathlib import Path

import numpy as np
import pytest

FLOW = str(Path(__file__).resolve().parents[2] / "flows" / "sso_flow.py")
pytestmark = [pytest.mark.flow, pytest.mark.slow]

ALL_ARMS = ["sso", "pbaa", "sso_ipo", "sso_simpo", "sso_no_minus", "sso_no_sft", "online_sso"]
CONFIG = f"""
[data]
n_queries = 8
n_eval = 4
[sampling]
backend = "transformers"
max_new_tokens = 12
shards = 1
[generator]
epochs = 1
batch_size = 4              # 2 steps: the first is the warmup step (learning rate 0)
gamma = 0.3
lam = 0.7
[policy]
arms = {ALL_ARMS!r}
epochs = 1
[eval]
max_new_tokens = 12
[judge]
accuracy_pairs = 4
"""


def test_every_arm_is_a_row_trained_on_its_source(mf_env):
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
    assert list(results.index) == ALL_ARMS
    for arm, summary in data.policy_summaries.items():
        expected = "ipo" if arm == "online_sso" else (ARMS[arm].loss or "dpo")   # [policy.online] loss
        assert summary["loss_type"] == expected, arm
    assert data.policy_summaries["online_sso"]["objective"] == "online_sso"

    # one generator per variant the arms need; each arm's pairs are its generator's, by source
    assert sorted(data.generator_pairs) == ["no_minus", "no_sft", "sso"]
    assert sorted(t.data.generator for t in run["train_generator"]) == ["no_minus", "no_sft", "sso"]
    assert results.loc["sso_no_minus", "source"] == "generator no_minus"
    assert results.loc["pbaa", "source"] == "pbaa_pairs" and results.loc["online_sso", "source"] == "sso_triples"
    assert (results.loc["sso_no_minus", "gamma"], results.loc["sso_no_minus", "lam"]) == (0.3, 0.0)
    assert (results.loc["sso_no_sft", "gamma"], results.loc["sso_no_sft", "lam"]) == (0.0, 0.7)
    by_arm = {t.data.arm: t.data for t in run["train_policy"]}
    for arm, gen in (("sso", "sso"), ("sso_ipo", "sso"), ("sso_no_minus", "no_minus"), ("sso_no_sft", "no_sft")):
        assert by_arm[arm].n_pairs == len(data.generator_pairs[gen]), arm
    assert by_arm["pbaa"].n_pairs == len(data.pbaa_pairs)
    assert by_arm["online_sso"].n_pairs == len(data.sso_triples)
    assert len({str(sorted(a.items())) for a in data.generator_adapters.values()}) == 3   # 3 generators
    assert len({str(sorted(a.items())) for a in data.policy_adapters.values()}) == len(ALL_ARMS)
    assert results["h2h_vs_sso"].drop("sso").between(0, 1).all()

    # training cost columns: measured seconds and tokens, the generator's for generator arms only
    assert (results["train_seconds"] > 0).all() and (results["train_tokens"] > 0).all()
    assert results.loc["sso_no_sft", "generator_seconds"] > 0 and results.loc["pbaa", "generator_seconds"] == 0

    # lambda = 0: the loss is L+ alone; gamma = 0: no SFT terms (per logged step, by hand)
    h = data.generator_histories["no_minus"]
    np.testing.assert_allclose(h["loss"], h["plus_base"] + 0.3 * h["plus_sft"], rtol=1e-5)
    h = data.generator_histories["no_sft"]
    np.testing.assert_allclose(h["loss"], h["plus_base"] + 0.7 * h["minus_base"], rtol=1e-5)
    h = data.generator_histories["sso"]
    np.testing.assert_allclose(h["loss"], h["plus_base"] + 0.3 * h["plus_sft"]
                               + 0.7 * (h["minus_base"] + 0.3 * h["minus_sft"]), rtol=1e-5)
    assert {"main_margin", "weight"} <= set(data.policy_histories["online_sso"].columns)

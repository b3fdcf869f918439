"""Cards, console output and exports of a finished run, read back the way a user would.

One small run (``--n_queries 12``) through metaflow.Runner in a temporary datastore; the cards'
HTML is fetched through the Client (``get_cards``) and through ``card get``; the card data
(base64 JSON in ``window.__MF_DATA__``) is decoded and compared with the run's artifacts, so a
card showing placeholders, stale or rounded-away numbers fails here.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  before metaflow: metaflow's vendored typing_extensions breaks a later torch import

from sso.report.cards import arm_table_row, fmt, truncate

REPO = Path(__file__).resolve().parents[2]
FLOW = str(REPO / "flows" / "sso_flow.py")

pytestmark = [pytest.mark.flow, pytest.mark.slow]

# Reads every card of a run through the Client API, in the run's cwd/datastore (Metaflow reads its
# settings at import time, so this runs in a child process with the run's environment).
DUMP_CARDS = r"""
import json, sys
from metaflow import Run, namespace
from metaflow.cards import get_cards
namespace(None)
run = Run(sys.argv[1])
out = {}
for step in run:
    for task in step:
        try:
            cards = list(get_cards(task))
        except Exception:
            continue
        for card in cards:
            out[f"{step.id}/{task.id}/{card.id}"] = card.get()
json.dump(out, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from metaflow import Runner

    root = tmp_path_factory.mktemp("cards-run")
    env = {"METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root), "METAFLOW_HOME": str(root / "mfhome"),
           "METAFLOW_CLIENT_CACHE_PATH": str(root / "cache"), "PYTHONPATH": str(REPO),
           "SSO_CARD_REFRESH_S": "5"}
    with Runner(FLOW, show_output=False, cwd=str(root), env=env) as runner:
        result = runner.run(n_queries=12)
        assert result.status == "successful", result.stderr[-5000:]
        run, stdout = result.run, result.stdout   # the log files go when the Runner closes
    child_env = {**os.environ, **env, "METAFLOW_USER": os.environ.get("METAFLOW_USER", "ci")}
    dump = root / "cards.json"
    subprocess.run([sys.executable, "-c", DUMP_CARDS, run.pathspec, str(dump)], cwd=root,
                   env=child_env, check=True, timeout=300)
    html = json.loads(dump.read_text())
    return {"run": run, "root": root, "env": child_env, "stdout": stdout, "html": html}


def card_components(html: str) -> list[dict]:
    """The components of a card's HTML (decoded from window.__MF_DATA__), depth first."""
    m = re.search(r'__MF_DATA__\["[^"]+"\]\s*=\s*"([A-Za-z0-9+/=]+)"', html)
    assert m, "no card data in the HTML"
    data = json.loads(base64.b64decode(m.group(1)))
    found = []

    def walk(c):
        found.append(c)
        for child in c.get("contents") or []:
            if isinstance(child, dict):
                walk(child)
    for c in data["components"]:
        walk(c)
    return found


def tables(components):
    return [c for c in components if c.get("type") == "table"]


def charts(components) -> dict[str, dict]:
    return {c["spec"]["title"]: c["spec"] for c in components if c.get("type") == "vegaChart"}


def markdown_text(components) -> str:
    return "\n".join(c["source"] for c in components if c.get("type") == "markdown")


def table_with(components, first_header):
    return [t for t in tables(components) if t["columns"][0] == first_header][0]


def the_card(small_run, step, task_id=None, card_id=None):
    keys = [k for k in small_run["html"] if k.startswith(f"{step}/")
            and (task_id is None or k.split("/")[1] == str(task_id))
            and (card_id is None or k.endswith(f"/{card_id}"))]
    assert len(keys) == 1, (step, task_id, sorted(small_run["html"]))
    return card_components(small_run["html"][keys[0]])


def test_every_card_step_has_exactly_its_card(small_run):
    run = small_run["run"]
    expected = {"join_samples/samples", "train_generator/training", "judge/judge", "compare/compare",
                "end/summary", "train_policy/training"}
    got = {f"{k.split('/')[0]}/{k.split('/')[2]}" for k in small_run["html"]}
    assert got == expected
    assert sum(k.startswith("train_policy/") for k in small_run["html"]) == len(run.data.arms)
    for html in small_run["html"].values():   # self-contained: nothing fetched from the network
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?:", html)


def test_samples_card(small_run):
    data = small_run["run"].data
    comps = the_card(small_run, "join_samples")
    counts = table_with(comps, "count")
    assert {r[0] for r in counts["data"]} == set(data.sampling_report)
    assert counts["data"] == [[k, fmt(data.sampling_report[k])] for k in (r[0] for r in counts["data"])]
    assert ["n_sso_triples", str(len(data.sso_triples))] in counts["data"]
    assert ["n_pbaa_pairs", str(len(data.pbaa_pairs))] in counts["data"]
    sources = table_with(comps, "principles")["data"]
    assert ["n_principles", str(data.principles_report["n_principles"])] in sources
    examples = table_with(comps, "query")
    first = data.sso_triples.iloc[0]
    assert examples["data"][0][:3] == [first.query_id, truncate(first.prompt), truncate(first.good_principle)]
    assert examples["data"][0][3] == truncate(first.y_plus)
    assert len(examples["data"]) == min(6, len(data.sso_triples))


def _training_card_matches(comps, history, summary, pairs):
    ch = charts(comps)
    loss = [c for t, c in ch.items() if t == "training loss"][0]
    assert [v["loss"] for v in loss["data"]["values"]] == pytest.approx(history["loss"].tolist())
    assert [v["step"] for v in loss["data"]["values"]] == history["step"].tolist()
    margin = [c for t, c in ch.items() if t.startswith("reward margin")][0]["data"]["values"]
    accuracy = [c for t, c in ch.items() if t.startswith("reward accuracy")][0]["data"]["values"]
    for prefix, label in pairs.items():
        assert [v["margin"] for v in margin if v["pair"] == label] == pytest.approx(
            history[f"{prefix}margin"].tolist())
        assert [v["accuracy"] for v in accuracy if v["pair"] == label] == pytest.approx(
            history[f"{prefix}accuracy"].tolist())
    lr = ch["learning rate"]["data"]["values"]
    assert [v["learning_rate"] for v in lr] == pytest.approx(history["learning_rate"].tolist())
    tps = ch["throughput"]["data"]["values"]
    assert [v["tokens_per_s"] for v in tps] == pytest.approx(history["tokens_per_s"].tolist())
    rows = table_with(comps, "metric")["data"]
    assert ["final_loss", fmt(summary["final_loss"])] in rows and ["steps", str(summary["steps"])] in rows
    n = int(history["step"].iloc[-1])
    assert f"**finished**: step {n} of {n}" in markdown_text(comps)


def test_generator_training_card(small_run):
    data = small_run["run"].data
    from sso.report.card_charts import TRAINING_PAIRS

    comps = the_card(small_run, "train_generator")
    _training_card_matches(comps, data.generator_history, data.generator_summary, TRAINING_PAIRS["sso"])
    rows = table_with(comps, "metric")["data"]
    assert ["plus_accuracy", fmt(data.generator_summary["plus_accuracy"])] in rows


def test_policy_training_cards(small_run):
    from sso.report.card_charts import TRAINING_PAIRS

    for task in small_run["run"]["train_policy"]:
        comps = the_card(small_run, "train_policy", task.id)
        _training_card_matches(comps, task.data.policy_history, task.data.policy_summary,
                               TRAINING_PAIRS["dpo"])
        assert f"Policy {task.data.arm} " in markdown_text(comps)


def test_judge_cards(small_run):
    for task in small_run["run"]["judge"]:
        d = task.data
        comps = the_card(small_run, "judge", task.id)
        head = table_with(comps, "arm")["data"][0]
        assert head[:3] == [d.arm, fmt(d.judge_metrics["pref_accuracy"]), fmt(d.judge_metrics["win_rate"])]
        outcome = [c for t, c in charts(comps).items() if t.startswith("eval pairs by outcome")][0]
        counts = {v["outcome"]: v["pairs"] for v in outcome["data"]["values"]}
        assert counts == {"win": d.judge_metrics["wins"], "tie": d.judge_metrics["ties"],
                          "loss": d.judge_metrics["losses"], "unparsable": d.judge_metrics["unparsable"]}
        usage = table_with(comps, "usage")["data"]
        assert ["requests", str(d.judge_usage["requests"])] in usage
        examples = [t for t in tables(comps) if t["columns"][-1] == "raw judge text"][0]
        raws = set(d.judgments["raw"].map(lambda t: truncate(t, 400)))
        assert examples["data"] and all(r[-1] in raws for r in examples["data"])


def test_compare_card(small_run):
    data = small_run["run"].data
    comps = the_card(small_run, "compare")
    arm_table = table_with(comps, "arm")
    assert arm_table["data"] == [arm_table_row(r) for r in data.results.to_dict(orient="records")]
    assert [r[0] for r in arm_table["data"]] == list(data.arms)
    win = [c for t, c in charts(comps).items() if t.startswith("win rate vs base")][0]
    assert [(v["arm"], v["win_rate"], v["ci_low"], v["ci_high"]) for v in win["layer"][0]["data"]["values"]] == [
        (r.arm, r.win_rate, r.win_rate_ci_low, r.win_rate_ci_high) for r in data.results.itertuples()]
    examples = [t for t in tables(comps) if t["columns"][-1] == "raw judge text"][0]
    judged = data.judgments
    for row in examples["data"]:
        match = judged[(judged.arm == row[0]) & (judged.query_id == row[1]) & (judged.kind == "win_rate")
                       & (judged.order.astype(str) == row[5])]
        assert len(match) == 1 and truncate(match.iloc[0]["raw"], 400) == row[-1]


def test_summary_card_links_the_step_cards(small_run):
    data = small_run["run"].data
    comps = the_card(small_run, "end")
    assert table_with(comps, "arm")["data"] == [arm_table_row(r) for r in data.results.to_dict(orient="records")]
    steps = table_with(comps, "step")["data"]
    named = [(c if isinstance(c, str) else c["source"]).strip() for c in (r[0] for r in steps)]
    assert [n.split("]")[0].lstrip("[") for n in named][:2] == ["join_samples", "train_generator"]
    links = [re.search(r"\((file://[^)]+)\)", n).group(1) for n in named if n.startswith("[")]
    assert len(links) == len(small_run["html"]) - 1           # every card but this one is exported
    for link in links:
        assert Path(link.removeprefix("file://")).is_file()
    assert f"run {small_run['run'].id}" in markdown_text(comps)


@pytest.fixture(scope="module")
def compare_html(small_run) -> Path:
    """The compare card as a user gets it: ``card get RUN/compare --id compare FILE``."""
    out = small_run["root"] / "compare.html"
    subprocess.run([sys.executable, FLOW, "card", "get", f"{small_run['run'].id}/compare", "--id",
                    "compare", str(out)], cwd=small_run["root"], env=small_run["env"], check=True,
                   timeout=300, capture_output=True)
    return out


def test_card_get_cli_writes_the_compare_card(small_run, compare_html):
    comps = card_components(compare_html.read_text())
    assert table_with(comps, "arm")["data"] == [arm_table_row(r) for r in
                                                small_run["run"].data.results.to_dict(orient="records")]


def test_compare_card_renders_headless(compare_html, tmp_path):
    """scripts/screenshot_card.py: Chromium, offline, renders the card (not a blank page)."""
    import shutil

    if not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no chromium (Debian: apt-get install -y chromium)")
    from PIL import Image

    sys.path.insert(0, str(REPO / "scripts"))
    from screenshot_card import screenshot

    png = screenshot(compare_html, tmp_path / "compare.png", width=1200, height=900)
    image = Image.open(png).convert("L")
    assert image.size == (1200, 900)
    # rendered content: many distinct grey levels (text, table rules, bars), not a blank page
    assert len(set(image.tobytes())) > 20


def test_console_output_ends_with_what_was_produced_and_next_commands(small_run):
    run_id = small_run["run"].id
    tail = [re.sub(r"^\S+ \S+ \[[^\]]+\] ", "", line) for line in small_run["stdout"].splitlines()[-16:]]
    text = "\n".join(tail)
    assert f"Run {run_id} produced, in " in text
    for command in (f"card view {run_id}/compare", f"card get {run_id}/compare --id compare",
                    "resume", "--config cfg", f"python -m sso export {run_id} DIR"):
        assert command in text, command


def test_run_exports_load_and_reproduce_the_logged_logits(small_run):
    """The flow's own export: Parquet via datasets, adapters reproduce the trainer's logits probe."""
    from datasets import load_dataset
    from peft import PeftModel

    from sso.report.export import load_manifest
    from sso.models.loading import load_model, resolve_model_path
    from sso.training.probe import compute_logits_probe, probe_matches

    data = small_run["run"].data
    exported = data.exported
    ds = load_dataset("parquet", data_files=exported["preferences_sso"], split="train")
    assert ds.num_rows == len(data.sso_pairs) and ds["chosen"] == data.sso_pairs["chosen"].tolist()
    manifest = load_manifest(Path(exported["manifest"]).parent)
    assert manifest["run_id"] == small_run["run"].id
    for arm, summary in data.policy_summaries.items():
        assert manifest["adapters"][f"policy-{arm}"]["logits_probe"] == summary["logits_probe"]
        base = load_model(resolve_model_path("sso-tiny"), dtype="float32", device="cpu")
        model = PeftModel.from_pretrained(base, exported[f"adapter_policy_{arm}"])
        assert probe_matches(summary["logits_probe"], compute_logits_probe(model)), arm


def test_sso_export_cli_rewrites_a_past_run(small_run, tmp_path):
    run = small_run["run"]
    out = tmp_path / "again"
    done = subprocess.run([sys.executable, "-m", "sso", "export", run.id, str(out)], cwd=small_run["root"],
                          env=small_run["env"], check=True, timeout=300, capture_output=True, text=True)
    assert "manifest" in done.stdout
    first = load_json(Path(run.data.exported["manifest"]))
    again = load_json(out / "manifest.json")
    digests = lambda m: {f["path"]: f["sha256"] for f in m["files"]}  # noqa: E731
    assert digests(again) == digests(first)                   # same bytes as the flow's export
    assert again["adapters"] == first["adapters"]
    assert sorted(p.name for p in (out / "cards").iterdir()) == sorted(
        f"{k.split('/')[0]}-{k.split('/')[1]}.html" for k in small_run["html"])   # incl. end's card
    bad = subprocess.run([sys.executable, "-m", "sso", "export", "999", str(tmp_path / "x")],
                         cwd=small_run["root"], env=small_run["env"], timeout=300, capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "sso export:" in bad.stderr and "Traceback" not in bad.stderr


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())

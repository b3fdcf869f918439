"""What the flow's cards show, as plain data: component specs, table rows and Vega-Lite specs.

Nothing here imports metaflow: every function takes artifacts (DataFrames, dicts) and returns a
list of *component specs*, small dicts that :mod:`flows.sso_cards` turns into Metaflow card
components::

    {"type": "markdown", "text": "## ..."}
    {"type": "table", "headers": [...], "rows": [[cell, ...], ...]}     # cells: str / int / float
                                                                        # or a markdown spec (links)
    {"type": "vega", "name": "loss", "spec": {...Vega-Lite v5...}}

Every number shown comes from an artifact of the run (DESIGN: "every number shown in a card is also
an artifact readable with the Client API"); nothing is recomputed here except formatting,
truncation and reshaping into long-form chart data.

Cards, by step: ``join_samples`` (:func:`build_samples_card`), ``train_generator`` /
``train_policy`` (:func:`build_training_card`, live: :func:`build_training_charts`), ``judge``
(:func:`build_judge_card`), ``compare`` (:func:`build_compare_card`), ``end``
(:func:`build_summary_card`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Sequence

VEGA_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
TEXT_LIMIT = 160            # characters of free text per table cell
RAW_JUDGE_LIMIT = 400       # characters of raw judge text per example judgment
CHART_HEIGHT = 180

# Pairs reported by each training objective: metric key prefix -> label in the charts.
TRAINING_PAIRS = {
    "sso": {"plus_": "plus (x+: y+ > y-)", "minus_": "minus (x-: y_o > y+)"},
    "dpo": {"": "chosen > rejected"},
}


# ----------------------------------------------------------------------------------------------
# Primitives
# ----------------------------------------------------------------------------------------------


def markdown(text: str) -> dict:
    return {"type": "markdown", "text": text}


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> dict:
    rows = [list(r) for r in rows]
    for i, r in enumerate(rows):
        if len(r) != len(headers):
            raise ValueError(f"table row {i} has {len(r)} cells, expected {len(headers)} ({list(headers)})")
    return {"type": "table", "headers": list(headers), "rows": rows}


def vega(name: str, spec: dict) -> dict:
    return {"type": "vega", "name": name, "spec": spec}


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value: Any, digits: int = 3) -> str:
    """A number as table text: ints as is, floats with ``digits`` decimals, missing as ``-``."""
    if is_missing(value):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if x != 0 and abs(x) < 0.5 * 10 ** -digits:   # small but not zero: significant digits
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


def truncate(text: Any, limit: int = TEXT_LIMIT) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis and the full length."""
    if is_missing(text):
        return ""
    s = " ".join(str(text).split())
    if len(s) <= limit:
        return s
    return f"{s[:limit].rstrip()}... [{len(s)} chars]"


def _plain(value: Any) -> Any:
    """numpy / pandas scalars -> Python scalars (JSON-safe); NaN -> None."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def _text(value: Any, missing: str = "") -> str:
    return missing if is_missing(value) or value == "" else str(value)


def _kv_table(pairs: Iterable[tuple[str, Any]], headers=("what", "value")) -> dict:
    return table(list(headers), [[k, fmt(v) if not isinstance(v, str) else v] for k, v in pairs])


# ----------------------------------------------------------------------------------------------
# join_samples
# ----------------------------------------------------------------------------------------------


def build_samples_card(report: dict, triples, pairs, principles=None, query_report: dict | None = None,
                       principles_report: dict | None = None, *, n_examples: int = 6,
                       limit: int = TEXT_LIMIT) -> list[dict]:
    """Counts (queries, kept, dropped by reason, principle sources) and example SSO triples.

    Principle sources come from ``principles_report`` (counts by source and fallback reason) when
    given, else from the ``source`` column of ``principles``.
    """
    specs = [markdown("# Sampling\n"
                      f"{report.get('n_train_queries', len(pairs))} train queries sampled in "
                      f"{report.get('n_shards', '?')} shard(s): **{len(triples)}** SSO triples for the "
                      f"generator, **{len(pairs)}** principle-based (PBAA) pairs, "
                      f"{report.get('n_base_answers', 0)} base answers for evaluation.")]
    order = ["n_train_queries", "n_generator_queries", "n_sso_triples", "n_pbaa_pairs",
             "n_base_answers", "n_shards", "truncated_principled", "mean_tokens_y_plus",
             "mean_tokens_y_minus"]
    keys = [k for k in order if k in report] + sorted(k for k in report if k not in order)
    specs.append(markdown("## Counts"))
    specs.append(_kv_table(((k, report[k]) for k in keys), headers=("count", "value")))
    dropped = {k: v for k, v in report.items() if "_dropped_" in k}
    if not dropped:
        specs.append(markdown("No degenerate records were dropped."))
    if query_report:
        specs.append(markdown("## Queries loaded"))
        specs.append(_kv_table(((k, v) for k, v in query_report.items()
                                if isinstance(v, (int, float, str))), headers=("count", "value")))
    if principles_report:
        specs.append(markdown("## Principle sources"))
        specs.append(_kv_table(((k, v) for k, v in principles_report.items()
                                if isinstance(v, (int, float, str))), headers=("principles", "value")))
    elif principles is not None and "source" in getattr(principles, "columns", ()):
        counts = principles["source"].value_counts()
        specs.append(markdown("## Principle sources"))
        specs.append(table(["source", "principle pairs"],
                           [[str(s), int(n)] for s, n in counts.items()]))
    specs.append(markdown(f"## Example triples (first {min(n_examples, len(triples))} of {len(triples)})"))
    cols = ["query_id", "prompt", "good_principle", "y_plus", "bad_principle", "y_minus", "y_o"]
    rows = [[str(r["query_id"])] + [truncate(r[c], limit) for c in cols[1:]]
            for _, r in triples.head(n_examples).iterrows()]
    specs.append(table(["query", "x (prompt)", "good principle", "y+ | x+", "bad principle",
                        "y- | x-", "y_o | x"], rows))
    return specs


# ----------------------------------------------------------------------------------------------
# Training (train_generator, train_policy)
# ----------------------------------------------------------------------------------------------


def training_pairs(history_or_row) -> dict[str, str]:
    """The (prefix -> label) pairs whose margin/accuracy a history reports."""
    cols = set(getattr(history_or_row, "columns", history_or_row))
    if "plus_margin" in cols:
        return TRAINING_PAIRS["sso"]
    return TRAINING_PAIRS["dpo"]


def _records(history) -> list[dict]:
    if history is None:
        return []
    if hasattr(history, "to_dict"):
        return [dict(r) for r in history.to_dict(orient="records")]
    return [dict(r) for r in history]


def build_training_chart_data(history) -> dict[str, list[dict]]:
    """Long-form chart rows from a history table (or list of logged rows)."""
    rows = _records(history)
    pairs = training_pairs(rows[0].keys() if rows else ())
    data: dict[str, list[dict]] = {"loss": [], "margin": [], "accuracy": [], "learning_rate": [],
                                   "tokens_per_s": []}
    for r in rows:
        step = _plain(r["step"])
        data["loss"].append({"step": step, "loss": _plain(r.get("loss"))})
        data["learning_rate"].append({"step": step, "learning_rate": _plain(r.get("learning_rate"))})
        data["tokens_per_s"].append({"step": step, "tokens_per_s": _plain(r.get("tokens_per_s"))})
        for prefix, label in pairs.items():
            if f"{prefix}margin" in r:
                data["margin"].append({"step": step, "pair": label, "margin": _plain(r[f"{prefix}margin"])})
            if f"{prefix}accuracy" in r:
                data["accuracy"].append({"step": step, "pair": label,
                                         "accuracy": _plain(r[f"{prefix}accuracy"])})
    return data


def line_chart(title: str, values: list[dict], y: str, *, y_title: str | None = None,
               color: str | None = None, y_domain: Sequence[float] | None = None) -> dict:
    """A Vega-Lite line chart of ``y`` over ``step`` (one line per ``color`` value)."""
    y_enc: dict[str, Any] = {"field": y, "type": "quantitative", "title": y_title or y}
    if y_domain is not None:
        y_enc["scale"] = {"domain": list(y_domain)}
    enc: dict[str, Any] = {"x": {"field": "step", "type": "quantitative", "title": "optimizer step"},
                           "y": y_enc,
                           "tooltip": [{"field": "step", "type": "quantitative"},
                                       {"field": y, "type": "quantitative", "format": ".4f"}]}
    if color:
        enc["color"] = {"field": color, "type": "nominal", "title": color}
        enc["tooltip"].append({"field": color, "type": "nominal"})
    return {"$schema": VEGA_SCHEMA, "title": title, "height": CHART_HEIGHT,
            "data": {"values": values}, "mark": {"type": "line", "point": True}, "encoding": enc}


def build_training_charts(history) -> list[dict]:
    """The training curves as vega specs: loss, per-pair margin and accuracy, LR, tokens/s."""
    data = build_training_chart_data(history)
    return [
        vega("loss", line_chart("training loss", data["loss"], "loss")),
        vega("margin", line_chart("reward margin per pair (beta * log-ratio, chosen - rejected)",
                                  data["margin"], "margin", color="pair")),
        vega("accuracy", line_chart("reward accuracy per pair (chosen reward > rejected)",
                                    data["accuracy"], "accuracy", color="pair", y_domain=(0, 1))),
        vega("learning_rate", line_chart("learning rate", data["learning_rate"], "learning_rate",
                                         y_title="learning rate")),
        vega("tokens_per_s", line_chart("throughput", data["tokens_per_s"], "tokens_per_s",
                                        y_title="tokens / s")),
    ]


def build_training_status(title: str, rows: Sequence[dict], total_steps: int | None,
                          *, done: bool = False) -> str:
    """One markdown header line for a (live) training card."""
    last = rows[-1] if rows else None
    step = int(last["step"]) if last else 0
    of = f" of {total_steps}" if total_steps else ""
    state = "finished" if done else ("training" if rows else "preparing (reference pass)")
    text = f"# {title}\n**{state}**: step {step}{of}"
    if last:
        text += (f", loss {fmt(last.get('loss'), 4)}, learning rate {last.get('learning_rate', 0):.2e}, "
                 f"{fmt(last.get('tokens_per_s'), 0)} tokens/s")
    return text


SUMMARY_ORDER = ("objective", "loss_type", "examples", "steps", "examples_seen", "final_loss",
                 "accuracy", "margin", "plus_accuracy", "plus_margin", "minus_accuracy",
                 "minus_margin", "tokens", "seconds", "tokens_per_s", "steps_per_s",
                 "reference_seconds", "truncated_sequences")


def build_training_card(title: str, history, summary: dict, *, total_steps: int | None = None) -> list[dict]:
    """The final training card: status, summary table (after-training metrics), curves."""
    rows = _records(history)
    keys = [k for k in SUMMARY_ORDER if k in summary]
    keys += sorted(k for k in summary if k not in keys and isinstance(summary[k], (int, float, str)))
    specs = [markdown(build_training_status(title, rows, total_steps or summary.get("steps"), done=True)),
             markdown("## Summary\nAccuracy and margin below are measured on the whole training "
                      "table after training (eval mode); the curves show per-step batch means."),
             _kv_table(((k, summary[k]) for k in keys), headers=("metric", "value")),
             markdown("## Curves")]
    return specs + build_training_charts(rows)


def planned_steps(n_examples: int, train_cfg, seed: int) -> int:
    """How many optimizer steps the trainer will take (for a live progress display)."""
    from sso.training.trainer import build_schedule

    return len(build_schedule(n_examples, train_cfg, seed))


# ----------------------------------------------------------------------------------------------
# judge / compare
# ----------------------------------------------------------------------------------------------

ARM_TABLE_HEADERS = ["arm", "pairs", "pref. accuracy", "on-policyness", "win rate", "95% CI",
                     "wins", "losses", "ties", "unparsable", "mean length", "base length",
                     "judge requests", "cost (USD)"]


def arm_table_row(r: dict) -> list:
    """One arm's row of the arm table, from a ``results`` row (steps/compare.py columns)."""
    return [str(r["arm"]), fmt(r.get("n_pairs")), fmt(r.get("pref_accuracy")),
            fmt(r.get("on_policyness"), 4), fmt(r.get("win_rate")),
            f"[{fmt(r.get('win_rate_ci_low'))}, {fmt(r.get('win_rate_ci_high'))}]",
            fmt(r.get("wins")), fmt(r.get("losses")), fmt(r.get("ties")), fmt(r.get("unparsable")),
            fmt(r.get("mean_answer_len"), 1), fmt(r.get("base_mean_answer_len"), 1),
            fmt(r.get("judge_requests")), fmt(r.get("judge_cost_usd"), 4)]


def win_rate_chart(results) -> dict:
    """Win rate vs the base policy per arm, with its bootstrap 95% interval and the 0.5 line."""
    values = [{"arm": str(r["arm"]), "win_rate": _plain(r["win_rate"]),
               "ci_low": _plain(r["win_rate_ci_low"]), "ci_high": _plain(r["win_rate_ci_high"])}
              for r in _records(results)]
    x = {"field": "arm", "type": "nominal", "sort": None, "title": "arm", "axis": {"labelAngle": 0}}
    return {
        "$schema": VEGA_SCHEMA, "title": "win rate vs base policy (ties count half), 95% bootstrap CI",
        "height": CHART_HEIGHT,
        "layer": [
            {"data": {"values": values}, "layer": [
                {"mark": {"type": "bar", "opacity": 0.8, "width": {"band": 0.6}},
                 "encoding": {"x": x, "y": {"field": "win_rate", "type": "quantitative",
                                            "title": "win rate", "scale": {"domain": [0, 1]}},
                              "tooltip": [{"field": "arm"}, {"field": "win_rate", "format": ".3f"},
                                          {"field": "ci_low", "format": ".3f"},
                                          {"field": "ci_high", "format": ".3f"}]}},
                {"mark": {"type": "errorbar", "ticks": {"size": 24}, "thickness": 2},
                 "encoding": {"x": x, "y": {"field": "ci_low", "type": "quantitative", "title": "win rate"},
                              "y2": {"field": "ci_high"}}},
            ]},
            {"data": {"values": [{"y": 0.5}]}, "mark": {"type": "rule", "strokeDash": [4, 4]},
             "encoding": {"y": {"field": "y", "type": "quantitative"}}},
        ],
    }


def metrics_chart(results) -> dict:
    """Preference-data accuracy, on-policyness and win rate per arm, one panel (own scale) each."""
    names = {"pref_accuracy": "pref. accuracy", "on_policyness": "on-policyness", "win_rate": "win rate"}
    values = [{"arm": str(r["arm"]), "metric": label, "value": _plain(r[key])}
              for r in _records(results) for key, label in names.items() if key in r]
    return {
        "$schema": VEGA_SCHEMA, "title": "arms side by side", "data": {"values": values},
        "facet": {"column": {"field": "metric", "type": "nominal", "title": None,
                             "sort": list(names.values())}},
        "spec": {"height": CHART_HEIGHT - 40, "width": 160, "mark": {"type": "bar"},
                 "encoding": {"x": {"field": "arm", "type": "nominal", "sort": None, "title": None,
                                    "axis": {"labelAngle": 0}},
                              "color": {"field": "arm", "type": "nominal", "sort": None, "legend": None},
                              "y": {"field": "value", "type": "quantitative", "title": None},
                              "tooltip": [{"field": "arm"}, {"field": "metric"},
                                          {"field": "value", "format": ".4g"}]}},
        "resolve": {"scale": {"y": "independent"}},
    }


def outcome_chart(arm_rows: list[dict]) -> dict:
    """Stacked wins / ties / losses / unparsable per arm."""
    values = [{"arm": str(r["arm"]), "outcome": o, "pairs": _plain(r.get(k, 0)) or 0}
              for r in arm_rows for o, k in (("win", "wins"), ("tie", "ties"), ("loss", "losses"),
                                             ("unparsable", "unparsable"))]
    return {
        "$schema": VEGA_SCHEMA, "title": "eval pairs by outcome (both orders must agree for a win)",
        "height": 120, "data": {"values": values}, "mark": {"type": "bar"},
        "encoding": {"y": {"field": "arm", "type": "nominal", "sort": None},
                     "x": {"field": "pairs", "type": "quantitative", "stack": "zero",
                           "axis": {"tickMinStep": 1, "format": "d"}},
                     "color": {"field": "outcome", "type": "nominal",
                               "scale": {"domain": ["win", "tie", "loss", "unparsable"]}},
                     "tooltip": [{"field": "arm"}, {"field": "outcome"}, {"field": "pairs"}]},
    }


def build_judgment_examples(judgments, answers=None, base_answers=None, *, n: int = 4,
                            limit: int = TEXT_LIMIT, raw_limit: int = RAW_JUDGE_LIMIT) -> list[dict]:
    """Example judgments (both orders of the first ``n`` eval pairs per arm) with raw judge text."""
    if judgments is None or len(judgments) == 0:
        return [markdown("No judgments.")]
    df = judgments
    if "kind" in df.columns:
        df = df[df["kind"] == "win_rate"]
    arms = list(dict.fromkeys(df["arm"])) if "arm" in df.columns else [None]
    prompts, arm_text, base_text = {}, {}, {}
    if base_answers is not None:
        base_text = dict(zip(map(str, base_answers["query_id"]), base_answers["answer"]))
        prompts = dict(zip(map(str, base_answers["query_id"]), base_answers["prompt"]))
    if answers is not None:
        key_arm = answers["arm"] if "arm" in answers.columns else [None] * len(answers)
        arm_text = {(a, str(q)): t for a, q, t in zip(key_arm, answers["query_id"], answers["answer"])}
    rows = []
    for arm in arms:
        sub = df if arm is None else df[df["arm"] == arm]
        for idx in list(dict.fromkeys(sub["pair_index"]))[:n]:
            for _, j in sub[sub["pair_index"] == idx].iterrows():
                qid = str(j["query_id"])
                rows.append([
                    "" if arm is None else str(arm), qid, truncate(prompts.get(qid, ""), limit),
                    truncate(arm_text.get((arm, qid), arm_text.get((None, qid), "")), limit),
                    truncate(base_text.get(qid, ""), limit), _text(j.get("order")),
                    _text(j.get("candidate_label")), _text(j.get("verdict"), "none"),
                    _text(j.get("preferred")), truncate(j.get("raw", ""), raw_limit)])
    return [table(["arm", "query", "instruction", "arm answer", "base answer", "order",
                   "arm's label", "verdict", "preferred", "raw judge text"], rows)]


def build_judge_card(arm: str, metrics: dict, usage: dict, judgments, answers=None, base_answers=None,
                     *, n_examples: int = 4) -> list[dict]:
    """One arm's judging: its metrics, usage and cost, outcome chart and example judgments."""
    row = {"arm": arm, **metrics, "judge_requests": usage.get("requests"),
           "judge_cost_usd": usage.get("est_cost_usd")}
    specs = [markdown(f"# Judge: arm `{arm}` vs base policy\n"
                      f"Judge `{usage.get('judge', '?')}`; each eval pair is judged in both orders; a "
                      "win needs both orders to agree, a disagreement is a tie, unparsable verdicts are "
                      "counted and never scored."),
             table([h for h in ARM_TABLE_HEADERS if h not in ("pairs", "on-policyness")],
                   [[c for h, c in zip(ARM_TABLE_HEADERS, arm_table_row(row))
                     if h not in ("pairs", "on-policyness")]]),
             vega("outcomes", outcome_chart([row])),
             markdown("## Usage"),
             _kv_table([(k, v) for k, v in usage.items()], headers=("usage", "value")),
             markdown("## Preference-data accuracy"),
             _kv_table([(k, metrics[k]) for k in ("pref_accuracy", "pref_accuracy_n", "pref_ties",
                                                 "pref_unparsable") if k in metrics],
                       headers=("metric", "value")),
             markdown(f"## Example judgments (raw judge text kept; first {n_examples} pairs)")]
    return specs + build_judgment_examples(judgments, answers, base_answers, n=n_examples)


def build_compare_card(results, judgments=None, answers=None, base_answers=None, *,
                       n_examples: int = 3) -> list[dict]:
    """The arm table as a table and charts, and example judgments per arm."""
    recs = _records(results)
    best = max(recs, key=lambda r: -1 if is_missing(r.get("win_rate")) else r["win_rate"]) if recs else None
    head = "# Compare arms\n"
    if best is not None:
        head += (f"Highest win rate vs the base policy: **{best['arm']}** ({fmt(best['win_rate'])}, "
                 f"95% CI [{fmt(best['win_rate_ci_low'])}, {fmt(best['win_rate_ci_high'])}]). ")
    head += ("Pref. accuracy: the judge prefers the arm's chosen response over its rejected one. "
             "On-policyness: mean per-token probability of the arm's responses under the initial policy.")
    specs = [markdown(head), table(ARM_TABLE_HEADERS, [arm_table_row(r) for r in recs]),
             vega("win_rate", win_rate_chart(recs)), vega("metrics", metrics_chart(recs)),
             vega("outcomes", outcome_chart(recs))]
    if judgments is not None:
        specs.append(markdown(f"## Example judgments (first {n_examples} eval pairs per arm, both orders)"))
        specs += build_judgment_examples(judgments, answers, base_answers, n=n_examples)
    return specs


# ----------------------------------------------------------------------------------------------
# end
# ----------------------------------------------------------------------------------------------


def build_summary_card(*, flow_name: str, run_id: str, config: dict, results, sampling_report: dict,
                       generator_summary: dict, policy_summaries: dict[str, dict],
                       step_cards: Sequence[dict], exported: dict[str, str] | None = None,
                       card_files: dict[str, str] | None = None) -> list[dict]:
    """A one-page summary: setup, data counts, results, what each step card holds, exports.

    ``step_cards``: one dict per card (step, id, task, what) in DAG order; ``card_files``: step ->
    exported HTML file of that card (linked when present).
    """
    model = config.get("model", {}).get("name", "?")
    run_cfg = config.get("run", {})
    recs = _records(results)
    specs = [markdown(f"# {flow_name} run {run_id}\n"
                      f"Model `{model}`, seed {run_cfg.get('seed', '?')}, "
                      f"{sampling_report.get('n_train_queries', '?')} train queries, "
                      f"arms {', '.join(str(r['arm']) for r in recs)}."),
             markdown("## Results"), table(ARM_TABLE_HEADERS, [arm_table_row(r) for r in recs]),
             vega("win_rate", win_rate_chart(recs)),
             markdown("## Pipeline"),
             table(["stage", "what came out"], [
                 ["sampling", f"{sampling_report.get('n_sso_triples', '?')} SSO triples, "
                              f"{sampling_report.get('n_pbaa_pairs', '?')} PBAA pairs, "
                              f"{sampling_report.get('n_base_answers', '?')} base answers"],
                 ["generator", f"{generator_summary.get('steps', '?')} steps, final loss "
                               f"{fmt(generator_summary.get('final_loss'), 4)}, "
                               f"{fmt(generator_summary.get('tokens_per_s'), 0)} tokens/s"],
                 *[[f"policy {arm}", f"{s.get('steps', '?')} steps, final loss {fmt(s.get('final_loss'), 4)}, "
                                     f"train accuracy {fmt(s.get('accuracy'))}"]
                   for arm, s in policy_summaries.items()],
             ]),
             markdown("## Step cards\nOpen one with `python flows/sso_flow.py card view "
                      f"{run_id}/<step>` (or `card get {run_id}/<step>[/<task>] --id <id> file.html`)."
                      + (" Exported copies are linked below." if card_files else ""))]
    rows = []
    for c in step_cards:
        link = (card_files or {}).get(f"{c['step']}/{c.get('task', '')}") or \
            (card_files or {}).get(c["step"])
        where = markdown(f"[{c['step']}]({_file_uri(link)})") if link else c["step"]
        rows.append([where, str(c.get("task", "")), str(c["id"]), c.get("what", "")])
    specs.append(table(["step", "task", "card id", "what it shows"], rows))
    if exported:
        specs.append(markdown("## Exported files"))
        specs.append(table(["what", "path"], [[k, v] for k, v in exported.items()]))
    return specs


def _file_uri(path: str) -> str:
    from pathlib import Path

    return Path(path).resolve().as_uri()


def render_next_steps(*, flow_file: str, run_id: str, out_dir: str, exported: dict[str, str],
                      configs_dir: str | None = None, n_card_files: int = 0) -> str:
    """The end of a run's console output: what was produced and the next commands to try.

    ``configs_dir``: where the shipped configs are (one that is not the default is suggested).
    Metaflow strips leading blanks from task output, so the lines start with ``-`` / ``$``.
    """
    import glob
    import os

    configs = sorted(glob.glob(os.path.join(configs_dir, "*.toml"))) if configs_dir else []
    configs = [c for c in configs if not c.endswith("tiny.toml")]
    configs.sort(key=lambda c: not c.endswith("local-gpu.toml"))
    prefs = sorted(k.split("_", 1)[1] for k in exported if k.startswith("preferences_"))
    adapters = sorted(k.split("_", 1)[1].replace("_", "-") for k in exported if k.startswith("adapter_"))
    lines = [f"Run {run_id} produced, in {out_dir}:",
             "- results.csv: one row per arm (pref. accuracy, on-policyness, win rate +- CI, ties, ...)",
             f"- preferences/<arm>.parquet and .jsonl: prompt/chosen/rejected of arms {', '.join(prefs)}",
             f"- adapters/<name>/: peft LoRA adapters {', '.join(adapters)}",
             "- manifest.json: files with sha256; each adapter's base model and logits probe"]
    if n_card_files:
        lines.append(f"- cards/*.html: {n_card_files} step cards as self-contained HTML files")
    f = flow_file
    lines += [
        "Next:",
        f"$ python {f} card view {run_id}/compare    # the arm table and charts in a browser",
        f"$ python {f} card get {run_id}/compare --id compare compare.html    # the same as one HTML file",
        f"$ python {f} card server    # a local viewer; training cards update live",
        f"$ python {f} resume    # after a failure: re-runs from the failed step, reuses the rest",
        f"$ python {f} --config cfg {configs[0] if configs else 'configs/<name>.toml'} run    # another config",
        f"$ python -m sso export {run_id} DIR    # export this run again (any past run)",
    ]
    return "\n".join(lines)

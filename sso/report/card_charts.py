"""The Vega-Lite charts of the cards: training curves, and the arm charts of the judge/compare cards.

Pure functions of artifacts (history tables, ``results`` rows) returning Vega-Lite v5 specs or
the long-form rows they plot; no metaflow, no torch.
"""

from __future__ import annotations

from typing import Any, Sequence

from sso.report.card_specs import CHART_HEIGHT, VEGA_SCHEMA, plain, records, vega

# Pairs reported by each training objective: metric key prefix -> label in the charts.
TRAINING_PAIRS = {
    "sso": {"plus_": "plus (x+: y+ > y-)", "minus_": "minus (x-: y_o > y+)"},
    "dpo": {"": "chosen > rejected"},
}


def training_pairs(history_or_row) -> dict[str, str]:
    """The (prefix -> label) pairs whose margin/accuracy a history reports."""
    cols = set(getattr(history_or_row, "columns", history_or_row))
    if "plus_margin" in cols:
        return TRAINING_PAIRS["sso"]
    return TRAINING_PAIRS["dpo"]


def build_training_chart_data(history) -> dict[str, list[dict]]:
    """Long-form chart rows from a history table (or list of logged rows)."""
    rows = records(history)
    pairs = training_pairs(rows[0].keys() if rows else ())
    data: dict[str, list[dict]] = {"loss": [], "margin": [], "accuracy": [], "learning_rate": [],
                                   "tokens_per_s": []}
    for r in rows:
        step = plain(r["step"])
        data["loss"].append({"step": step, "loss": plain(r.get("loss"))})
        data["learning_rate"].append({"step": step, "learning_rate": plain(r.get("learning_rate"))})
        data["tokens_per_s"].append({"step": step, "tokens_per_s": plain(r.get("tokens_per_s"))})
        for prefix, label in pairs.items():
            if f"{prefix}margin" in r:
                data["margin"].append({"step": step, "pair": label, "margin": plain(r[f"{prefix}margin"])})
            if f"{prefix}accuracy" in r:
                data["accuracy"].append({"step": step, "pair": label,
                                         "accuracy": plain(r[f"{prefix}accuracy"])})
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


def win_rate_chart(results) -> dict:
    """Win rate vs the base policy per arm, with its bootstrap 95% interval and the 0.5 line."""
    values = [{"arm": str(r["arm"]), "win_rate": plain(r["win_rate"]),
               "ci_low": plain(r["win_rate_ci_low"]), "ci_high": plain(r["win_rate_ci_high"])}
              for r in records(results)]
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
    values = [{"arm": str(r["arm"]), "metric": label, "value": plain(r[key])}
              for r in records(results) for key, label in names.items() if key in r]
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
    values = [{"arm": str(r["arm"]), "outcome": o, "pairs": plain(r.get(k, 0)) or 0}
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


def sweep_chart(sweep_rows: list[dict]) -> dict:
    """Win rate vs base by generator gamma (log scale), one line per lambda, with 95% CIs."""
    values = [{"gamma": plain(r["gamma"]), "lambda": str(plain(r["lam"])), "win_rate": plain(r["win_rate"]),
               "ci_low": plain(r["win_rate_ci_low"]), "ci_high": plain(r["win_rate_ci_high"]), "arm": str(r["arm"])}
              for r in sweep_rows]
    x = {"field": "gamma", "type": "quantitative", "title": "generator gamma (SFT weight)",
         "scale": {"type": "symlog", "constant": 0.01}}
    color = {"field": "lambda", "type": "nominal", "title": "lambda"}
    return {
        "$schema": VEGA_SCHEMA, "title": "generator sweep: win rate vs base policy, 95% bootstrap CI",
        "height": CHART_HEIGHT, "data": {"values": values},
        "layer": [
            {"mark": {"type": "line", "point": True},
             "encoding": {"x": x, "y": {"field": "win_rate", "type": "quantitative", "title": "win rate",
                                        "scale": {"domain": [0, 1]}}, "color": color,
                          "tooltip": [{"field": "arm"}, {"field": "win_rate", "format": ".3f"}]}},
            {"mark": {"type": "errorbar", "ticks": True},
             "encoding": {"x": x, "y": {"field": "ci_low", "type": "quantitative"}, "y2": {"field": "ci_high"},
                          "color": color}},
        ],
    }

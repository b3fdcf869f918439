"""What the flow's cards show, as plain data: one list of component specs per card.

Nothing here imports metaflow: every function takes artifacts (DataFrames, dicts) and returns a
list of *component specs* (:mod:`sso.report.card_specs`: markdown, table and Vega-Lite specs, the
charts from :mod:`sso.report.card_charts`) that :mod:`flows.sso_cards` turns into Metaflow card
components.

Every number shown comes from an artifact of the run, so it can also be read with the Client API;
nothing is recomputed here except formatting, truncation and reshaping into long-form chart data.

Cards, by step: ``join_samples`` (:func:`build_samples_card`), ``train_generator`` /
``train_policy`` (:func:`build_training_card`, live: :func:`build_training_charts`), ``judge``
(:func:`build_judge_card`), ``compare`` (:func:`build_compare_card`), ``end``
(:func:`build_summary_card`).
"""

from __future__ import annotations

from typing import Sequence

from sso.report.card_charts import build_training_charts, metrics_chart, outcome_chart, sweep_chart, win_rate_chart
from sso.report.card_specs import (RAW_JUDGE_LIMIT, TEXT_LIMIT, cell_text, fmt, is_missing, kv_table, markdown,
                                   records, table, truncate, vega)

# ----------------------------------------------------------------------------------------------
# join_samples
# ----------------------------------------------------------------------------------------------

COUNT_ORDER = ("n_train_queries", "n_generator_queries", "n_sso_triples", "n_pbaa_pairs",
               "n_base_answers", "n_shards", "truncated_principled", "mean_tokens_y_plus",
               "mean_tokens_y_minus")


def _scalar_table(report: dict, header: str) -> dict:
    """The int / float / str entries of ``report`` as a (``header``, value) table."""
    return kv_table(((k, v) for k, v in report.items() if isinstance(v, (int, float, str))),
                    headers=(header, "value"))


def _counts_section(report: dict) -> list[dict]:
    keys = [k for k in COUNT_ORDER if k in report] + sorted(k for k in report if k not in COUNT_ORDER)
    specs = [markdown("## Counts"), kv_table(((k, report[k]) for k in keys), headers=("count", "value"))]
    if not any("_dropped_" in k for k in report):
        specs.append(markdown("No degenerate records were dropped."))
    return specs


def _principle_sources(principles, principles_report: dict | None) -> list[dict]:
    if principles_report:
        return [markdown("## Principle sources"), _scalar_table(principles_report, "principles")]
    if principles is not None and "source" in getattr(principles, "columns", ()):
        counts = principles["source"].value_counts()
        return [markdown("## Principle sources"),
                table(["source", "principle pairs"], [[str(s), int(n)] for s, n in counts.items()])]
    return []


def _example_triples(triples, n_examples: int, limit: int) -> list[dict]:
    cols = ["query_id", "prompt", "good_principle", "y_plus", "bad_principle", "y_minus", "y_o"]
    rows = [[str(r["query_id"])] + [truncate(r[c], limit) for c in cols[1:]]
            for _, r in triples.head(n_examples).iterrows()]
    return [markdown(f"## Example triples (first {min(n_examples, len(triples))} of {len(triples)})"),
            table(["query", "x (prompt)", "good principle", "y+ | x+", "bad principle",
                   "y- | x-", "y_o | x"], rows)]


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
    specs += _counts_section(report)
    if query_report:
        specs += [markdown("## Queries loaded"), _scalar_table(query_report, "count")]
    specs += _principle_sources(principles, principles_report)
    return specs + _example_triples(triples, n_examples, limit)


# ----------------------------------------------------------------------------------------------
# Training (train_generator, train_policy)
# ----------------------------------------------------------------------------------------------


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
    rows = records(history)
    keys = [k for k in SUMMARY_ORDER if k in summary]
    keys += sorted(k for k in summary if k not in keys and isinstance(summary[k], (int, float, str)))
    specs = [markdown(build_training_status(title, rows, total_steps or summary.get("steps"), done=True)),
             markdown("## Summary\nAccuracy and margin below are measured on the whole training "
                      "table after training (eval mode); the curves show per-step batch means."),
             kv_table(((k, summary[k]) for k in keys), headers=("metric", "value")),
             markdown("## Curves")]
    return specs + build_training_charts(rows)


def planned_steps(n_examples: int, train_cfg, seed: int) -> int:
    """How many optimizer steps the trainer will take (for a live progress display)."""
    from sso.training.schedule import build_schedule

    return len(build_schedule(n_examples, train_cfg, seed))


# ----------------------------------------------------------------------------------------------
# judge / compare
# ----------------------------------------------------------------------------------------------

ARM_TABLE_HEADERS = ["arm", "pairs", "pref. accuracy", "on-policyness", "win rate", "95% CI",
                     "wins", "losses", "ties", "unparsable", "mean length", "base length",
                     "judge requests", "cost (USD)", "LC win rate", "LC 95% CI", "vs sso (h2h)",
                     "h2h 95% CI", "win rate - sso's", "diff 95% CI", "data from", "train s", "generator s"]


def arm_table_row(r: dict) -> list:
    """One arm's row of the arm table, from a ``results`` row (sso.report.results columns)."""
    return [str(r["arm"]), fmt(r.get("n_pairs")), fmt(r.get("pref_accuracy")),
            fmt(r.get("on_policyness"), 4), fmt(r.get("win_rate")),
            f"[{fmt(r.get('win_rate_ci_low'))}, {fmt(r.get('win_rate_ci_high'))}]",
            fmt(r.get("wins")), fmt(r.get("losses")), fmt(r.get("ties")), fmt(r.get("unparsable")),
            fmt(r.get("mean_answer_len"), 1), fmt(r.get("base_mean_answer_len"), 1),
            fmt(r.get("judge_requests")), fmt(r.get("judge_cost_usd"), 4),
            *rate_with_ci(r, "lc_win_rate"), *rate_with_ci(r, "h2h_vs_sso"), *rate_with_ci(r, "win_rate_diff_vs_sso"),
            cell_text(r.get("source")), fmt(r.get("train_seconds"), 1), fmt(r.get("generator_seconds"), 1)]


def rate_with_ci(r: dict, key: str) -> list[str]:
    """``key`` and its ``[key_ci_low, key_ci_high]`` interval, formatted ("-" when missing)."""
    return [fmt(r.get(key)), f"[{fmt(r.get(key + '_ci_low'))}, {fmt(r.get(key + '_ci_high'))}]"]


def _arm_table(recs: list[dict]) -> dict:
    return table(ARM_TABLE_HEADERS, [arm_table_row(r) for r in recs])


def _answer_lookups(answers, base_answers) -> tuple[dict, dict, dict]:
    """(query -> instruction, (arm, query) -> arm answer, query -> base answer)."""
    prompts, arm_text, base_text = {}, {}, {}
    if base_answers is not None:
        base_text = dict(zip(map(str, base_answers["query_id"]), base_answers["answer"]))
        prompts = dict(zip(map(str, base_answers["query_id"]), base_answers["prompt"]))
    if answers is not None:
        key_arm = answers["arm"] if "arm" in answers.columns else [None] * len(answers)
        arm_text = {(a, str(q)): t for a, q, t in zip(key_arm, answers["query_id"], answers["answer"])}
    return prompts, arm_text, base_text


def build_judgment_examples(judgments, answers=None, base_answers=None, *, n: int = 4,
                            limit: int = TEXT_LIMIT, raw_limit: int = RAW_JUDGE_LIMIT) -> list[dict]:
    """Example judgments (both orders of the first ``n`` eval pairs per arm) with raw judge text."""
    if judgments is None or len(judgments) == 0:
        return [markdown("No judgments.")]
    df = judgments
    if "kind" in df.columns:
        df = df[df["kind"] == "win_rate"]
    arms = list(dict.fromkeys(df["arm"])) if "arm" in df.columns else [None]
    prompts, arm_text, base_text = _answer_lookups(answers, base_answers)
    rows = []
    for arm in arms:
        sub = df if arm is None else df[df["arm"] == arm]
        for idx in list(dict.fromkeys(sub["pair_index"]))[:n]:
            for _, j in sub[sub["pair_index"] == idx].iterrows():
                qid = str(j["query_id"])
                rows.append([
                    "" if arm is None else str(arm), qid, truncate(prompts.get(qid, ""), limit),
                    truncate(arm_text.get((arm, qid), arm_text.get((None, qid), "")), limit),
                    truncate(base_text.get(qid, ""), limit), cell_text(j.get("order")),
                    cell_text(j.get("candidate_label")), cell_text(j.get("verdict"), "none"),
                    cell_text(j.get("preferred")), truncate(j.get("raw", ""), raw_limit)])
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
             kv_table([(k, v) for k, v in usage.items()], headers=("usage", "value")),
             markdown("## Preference-data accuracy"),
             kv_table([(k, metrics[k]) for k in ("pref_accuracy", "pref_accuracy_n", "pref_ties",
                                                "pref_unparsable") if k in metrics],
                      headers=("metric", "value")),
             markdown(f"## Example judgments (raw judge text kept; first {n_examples} pairs)")]
    return specs + build_judgment_examples(judgments, answers, base_answers, n=n_examples)


def build_compare_card(results, judgments=None, answers=None, base_answers=None, *,
                       n_examples: int = 3) -> list[dict]:
    """The arm table as a table and charts, and example judgments per arm."""
    recs = records(results)
    best = max(recs, key=lambda r: -1 if is_missing(r.get("win_rate")) else r["win_rate"]) if recs else None
    head = "# Compare arms\n"
    if best is not None:
        head += (f"Highest win rate vs the base policy: **{best['arm']}** ({fmt(best['win_rate'])}, "
                 f"95% CI [{fmt(best['win_rate_ci_low'])}, {fmt(best['win_rate_ci_high'])}]). ")
    head += ("Pref. accuracy: the judge prefers the arm's chosen response over its rejected one. "
             "On-policyness: mean per-token probability of the arm's responses under the initial policy.")
    specs = [markdown(head), _arm_table(recs),
             vega("win_rate", win_rate_chart(recs)), vega("metrics", metrics_chart(recs)),
             vega("outcomes", outcome_chart(recs)), *build_sweep_section(results)]
    if judgments is not None:
        specs.append(markdown(f"## Example judgments (first {n_examples} eval pairs per arm, both orders)"))
        specs += build_judgment_examples(judgments, answers, base_answers, n=n_examples)
    return specs


def build_sweep_section(results) -> list[dict]:
    """With a ``[generator.sweep]``: the generator-based arms by (gamma, lambda), table and chart."""
    from sso.report.results import sweep_table

    if "gamma" not in results or not results["arm"].astype(str).str.startswith("sweep_").any():
        return []
    recs = records(sweep_table(results))
    return [markdown("## Generator sweep\nOne generator per (gamma, lambda) point, each point's pairs "
                     "training its own policy; win rate vs the base policy with its 95% CI."),
            table(["arm", "gamma", "lambda", "pairs", "win rate", "95% CI", "LC win rate", "LC 95% CI",
                   "pref. accuracy", "generator s", "train s"],
                  [[str(r["arm"]), fmt(r["gamma"], 4), fmt(r["lam"], 4), fmt(r["n_pairs"]),
                    *rate_with_ci(r, "win_rate"), *rate_with_ci(r, "lc_win_rate"), fmt(r["pref_accuracy"]),
                    fmt(r["generator_seconds"], 1), fmt(r["train_seconds"], 1)] for r in recs]),
            vega("sweep", sweep_chart(recs))]


# ----------------------------------------------------------------------------------------------
# end
# ----------------------------------------------------------------------------------------------


def _pipeline_table(sampling_report: dict, generator_summary: dict, policy_summaries: dict[str, dict]) -> dict:
    """One row per stage (sampling, generator, each policy) and what came out of it."""
    return table(["stage", "what came out"], [
        ["sampling", f"{sampling_report.get('n_sso_triples', '?')} SSO triples, "
                     f"{sampling_report.get('n_pbaa_pairs', '?')} PBAA pairs, "
                     f"{sampling_report.get('n_base_answers', '?')} base answers"],
        ["generator", f"{generator_summary.get('steps', '?')} steps, final loss "
                      f"{fmt(generator_summary.get('final_loss'), 4)}, "
                      f"{fmt(generator_summary.get('tokens_per_s'), 0)} tokens/s"],
        *[[f"policy {arm}", f"{s.get('steps', '?')} steps, final loss {fmt(s.get('final_loss'), 4)}, "
                            f"train accuracy {fmt(s.get('accuracy'))}"]
          for arm, s in policy_summaries.items()],
    ])


def _file_uri(path: str) -> str:
    from pathlib import Path

    return Path(path).resolve().as_uri()


def _step_cards_table(step_cards: Sequence[dict], card_files: dict[str, str] | None) -> dict:
    """One row per step card; the step links to its exported HTML file when there is one."""
    rows = []
    for c in step_cards:
        link = (card_files or {}).get(f"{c['step']}/{c.get('task', '')}") or \
            (card_files or {}).get(c["step"])
        where = markdown(f"[{c['step']}]({_file_uri(link)})") if link else c["step"]
        rows.append([where, str(c.get("task", "")), str(c["id"]), c.get("what", "")])
    return table(["step", "task", "card id", "what it shows"], rows)


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
    recs = records(results)
    specs = [markdown(f"# {flow_name} run {run_id}\n"
                      f"Model `{model}`, seed {run_cfg.get('seed', '?')}, "
                      f"{sampling_report.get('n_train_queries', '?')} train queries, "
                      f"arms {', '.join(str(r['arm']) for r in recs)}."),
             markdown("## Results"), _arm_table(recs),
             vega("win_rate", win_rate_chart(recs)),
             markdown("## Pipeline"), _pipeline_table(sampling_report, generator_summary, policy_summaries),
             markdown("## Step cards\nOpen one with `python flows/sso_flow.py card view "
                      f"{run_id}/<step>` (or `card get {run_id}/<step>[/<task>] --id <id> file.html`)."
                      + (" Exported copies are linked below." if card_files else "")),
             _step_cards_table(step_cards, card_files)]
    if exported:
        specs.append(markdown("## Exported files"))
        specs.append(table(["what", "path"], [[k, v] for k, v in exported.items()]))
    return specs


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

"""Unit tests for sso.data.queries: the shipped query set, the loaders, cleaning and splitting."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pandas as pd
import pytest

from sso.data.queries import (
    builtin_queries_path,
    clean_queries,
    load_query_table,
    split_queries,
)

CATEGORIES = {
    "advice", "how_to", "coding", "math", "creative_writing", "explanation", "analysis",
    "safety_sensitive", "rewriting", "planning",
}


def _frame(prompts, ids=None):
    ids = ids or [f"id{i}" for i in range(len(prompts))]
    return pd.DataFrame({"query_id": ids, "prompt": pd.Series(prompts, dtype=object),
                         "source": "test"})


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CUSTOM_ROWS = [
    {"uid": 7, "instruction": "Name three rivers in Africa.", "extra": 1},
    {"uid": 3, "instruction": "Write a haiku about snow.", "extra": 2},
    {"uid": 11, "instruction": "How many legs does a spider have?", "extra": 3},
]


# --- the shipped query set ------------------------------------------------------------------

def test_builtin_set_loads_with_unique_ids_and_no_blanks():
    df = load_query_table("builtin")
    assert list(df.columns) == ["query_id", "prompt", "source"]
    assert len(df) >= 240
    assert df["query_id"].is_unique
    assert set(df["source"]) == {"builtin"}
    assert all(isinstance(p, str) and p.strip() == p and p for p in df["prompt"])
    # ids are the stable ones written in the file, not positional
    assert df["query_id"].iloc[0] == "q0001"
    assert all(len(q) == 5 and q[0] == "q" and q[1:].isdigit() for q in df["query_id"])
    cleaned, report = clean_queries(df, max_chars=4000)
    assert report["kept"] == len(df)  # no blanks, no duplicates in the shipped set


def test_builtin_set_covers_every_category():
    rows = [json.loads(line) for line in builtin_queries_path().read_text("utf-8").splitlines()]
    assert len({r["id"] for r in rows}) == len(rows)
    counts = collections.Counter(r["category"] for r in rows)
    assert set(counts) == CATEGORIES
    assert min(counts.values()) >= 15, counts
    assert len({" ".join(r["prompt"].split()).lower() for r in rows}) == len(rows)


def test_builtin_ignores_custom_columns():
    df = load_query_table("builtin", text_column="instruction", id_column="uid")
    assert len(df) >= 240 and df["query_id"].iloc[0] == "q0001"


# --- round trips ---------------------------------------------------------------------------

def _check_custom(df: pd.DataFrame, path: Path) -> None:
    assert list(df["query_id"]) == ["7", "3", "11"]
    assert list(df["prompt"]) == [r["instruction"] for r in CUSTOM_ROWS]
    assert set(df["source"]) == {str(path)}
    assert list(df.columns) == ["query_id", "prompt", "source"]


def test_jsonl_round_trip_custom_columns(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", CUSTOM_ROWS)
    df = load_query_table(str(path), text_column="instruction", id_column="uid")
    _check_custom(df, path)


def test_csv_round_trip_custom_columns(tmp_path):
    path = tmp_path / "q.csv"
    pd.DataFrame(CUSTOM_ROWS).to_csv(path, index=False)
    df = load_query_table(str(path), text_column="instruction", id_column="uid")
    _check_custom(df, path)


def test_parquet_round_trip_custom_columns(tmp_path):
    path = tmp_path / "q.parquet"
    pd.DataFrame(CUSTOM_ROWS).to_parquet(path, index=False)
    df = load_query_table(str(path), text_column="instruction", id_column="uid")
    _check_custom(df, path)


def test_fmt_overrides_extension(tmp_path):
    path = tmp_path / "q.txt"
    pd.DataFrame(CUSTOM_ROWS).to_csv(path, index=False)
    with pytest.raises(ValueError, match="extension"):
        load_query_table(str(path), text_column="instruction")
    df = load_query_table(str(path), text_column="instruction", id_column="uid", fmt="csv")
    _check_custom(df, path)


def test_json_array_file(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps(CUSTOM_ROWS), encoding="utf-8")
    df = load_query_table(str(path), text_column="instruction", id_column="uid")
    _check_custom(df, path)


def test_positional_ids_are_stable_and_skip_blank_lines(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n{"prompt": "c"}\n', encoding="utf-8")
    df = load_query_table(str(path))
    assert list(df["query_id"]) == ["q00000", "q00001", "q00002"]
    assert list(df["prompt"]) == ["a", "b", "c"]
    # empty string for id_column means "none", as in the config file
    assert list(load_query_table(str(path), id_column="")["query_id"]) == list(df["query_id"])


def test_csv_ids_keep_leading_zeros_and_empty_cells_are_blank(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("id,prompt\n007,hello\n008,\n", encoding="utf-8")
    df = load_query_table(str(path), id_column="id")
    assert list(df["query_id"]) == ["007", "008"]
    _, report = clean_queries(df, max_chars=100)
    assert report["blank"] == 1 and report["skipped_ids"]["blank"] == ["008"]


def test_jsonl_row_without_text_is_loaded_as_none(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", [{"prompt": "hi"}, {"other": 1}])
    df = load_query_table(str(path))
    assert df["prompt"].iloc[1] is None


# --- errors ---------------------------------------------------------------------------------

def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_query_table(str(path))


def test_malformed_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"prompt": "also ok"}\n{"prompt": oops}\n',
                    encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:4: invalid JSON"):
        load_query_table(str(path))


def test_non_object_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"prompt": "ok"}\n["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"list\.jsonl:2: expected a JSON object, got list"):
        load_query_table(str(path))


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_missing_text_column_names_column_file_and_columns(tmp_path, suffix):
    path = tmp_path / f"q.{suffix}"
    frame = pd.DataFrame(CUSTOM_ROWS)
    if suffix == "jsonl":
        _write_jsonl(path, CUSTOM_ROWS)
    elif suffix == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    with pytest.raises(ValueError) as info:
        load_query_table(str(path), text_column="question")
    msg = str(info.value)
    assert "'question'" in msg and str(path) in msg and "instruction" in msg and "uid" in msg


def test_missing_id_column_is_named(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", CUSTOM_ROWS)
    with pytest.raises(ValueError, match=r"id column 'qid' not found"):
        load_query_table(str(path), text_column="instruction", id_column="qid")


def test_duplicate_ids_name_id_and_lines(tmp_path):
    rows = [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "a", "prompt": "z"}]
    path = _write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(ValueError, match=r"duplicate query id 'a' at line 1 and line 3"):
        load_query_table(str(path), id_column="id")
    csv = tmp_path / "dup.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"duplicate query id 'a' at row 1 and row 3"):
        load_query_table(str(csv), id_column="id")


def test_bad_arguments_raise(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", CUSTOM_ROWS)
    with pytest.raises(ValueError, match="fmt"):
        load_query_table(str(path), fmt="xml")
    with pytest.raises(ValueError, match="text_column"):
        load_query_table(str(path), text_column="")
    with pytest.raises(ValueError, match="no queries"):
        load_query_table(str(_write_jsonl(tmp_path / "empty.jsonl", [])))
    plain_dir = tmp_path / "somedir"
    plain_dir.mkdir()
    with pytest.raises(ValueError, match="not a Hugging Face"):
        load_query_table(str(plain_dir))


# --- cleaning -------------------------------------------------------------------------------

def test_clean_counts_every_drop_and_lists_ids():
    prompts = [
        "  Hello there  ",            # a: kept, stripped
        "",                           # b: blank
        None,                         # c: blank
        "   \n\t ",                   # d: blank
        42,                           # e: not a string -> blank
        "x" * 16,                     # f: too long (max 15)
        "  " + "y" * 15 + "   ",      # g: exactly 15 after strip -> kept
        "hello   THERE",              # h: duplicate of a (case + whitespace)
        "Other",                      # i: kept
        "other",                      # j: duplicate of i
        float("nan"),                 # k: blank
    ]
    ids = list("abcdefghijk")
    df = _frame(prompts, ids)
    out, report = clean_queries(df, max_chars=15)
    assert report["rows_read"] == 11
    assert report["blank"] == 5
    assert report["too_long"] == 1
    assert report["duplicates"] == 2
    assert report["kept"] == 3
    assert report["skipped_ids"] == {"blank": ["b", "c", "d", "e", "k"],
                                     "too_long": ["f"], "duplicates": ["h", "j"]}
    assert list(out["query_id"]) == ["a", "g", "i"]
    assert list(out["prompt"]) == ["Hello there", "y" * 15, "Other"]
    assert list(out.index) == [0, 1, 2]
    assert list(out["source"]) == ["test"] * 3
    # the input is not modified
    assert df["prompt"].iloc[0] == "  Hello there  "


def test_clean_without_dedupe_keeps_duplicates():
    out, report = clean_queries(_frame(["Same", "same", "SAME "]), max_chars=100, dedupe=False)
    assert report["duplicates"] == 0 and report["kept"] == 3 and len(out) == 3


def test_clean_lists_at_most_20_ids_but_counts_all():
    out, report = clean_queries(_frame([""] * 25 + ["ok"]), max_chars=5)
    assert report["blank"] == 25 and report["kept"] == 1
    assert len(report["skipped_ids"]["blank"]) == 20
    assert report["skipped_ids"]["blank"][0] == "id0"


def test_clean_validates_arguments():
    with pytest.raises(ValueError, match="max_chars"):
        clean_queries(_frame(["a"]), max_chars=0)
    with pytest.raises(ValueError, match="prompt"):
        clean_queries(pd.DataFrame({"query_id": ["a"]}), max_chars=5)


# --- splitting ------------------------------------------------------------------------------

def _pool(n=50):
    return _frame([f"prompt {i}" for i in range(n)], [f"q{i:03d}" for i in range(n)])


def test_split_is_deterministic_and_disjoint():
    df = _pool()
    tr1, ev1 = split_queries(df, n_train=20, n_eval=10, seed=3)
    tr2, ev2 = split_queries(df, n_train=20, n_eval=10, seed=3)
    assert list(tr1["query_id"]) == list(tr2["query_id"])
    assert list(ev1["query_id"]) == list(ev2["query_id"])
    assert len(tr1) == 20 and len(ev1) == 10
    assert not set(tr1["query_id"]) & set(ev1["query_id"])
    assert list(tr1.columns) == list(df.columns) and list(tr1.index) == list(range(20))
    # rows stay intact
    assert all(p == f"prompt {int(q[1:])}" for q, p in zip(tr1["query_id"], tr1["prompt"]))
    tr3, ev3 = split_queries(df, n_train=20, n_eval=10, seed=4)
    assert list(tr3["query_id"]) != list(tr1["query_id"])
    # not simply the first rows in id order
    assert list(tr1["query_id"]) != sorted(df["query_id"])[:20]


def test_split_ignores_input_row_order():
    df = _pool()
    shuffled = df.sample(frac=1.0, random_state=123).reset_index(drop=True)
    assert list(shuffled["query_id"]) != list(df["query_id"])
    a = split_queries(df, n_train=15, n_eval=5, seed=9)
    b = split_queries(shuffled, n_train=15, n_eval=5, seed=9)
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x, y)


def test_split_allows_zero_eval_and_rejects_zero_train():
    train, evals = split_queries(_pool(10), n_train=10, n_eval=0, seed=0)
    assert len(train) == 10 and len(evals) == 0 and list(evals.columns) == list(train.columns)
    with pytest.raises(ValueError, match="n_train"):
        split_queries(_pool(10), n_train=0, n_eval=5, seed=0)


def test_split_too_many_rows_raises_with_counts():
    with pytest.raises(ValueError, match=r"asked for 12 .* only 10 are available"):
        split_queries(_pool(10), n_train=8, n_eval=4, seed=0)


def test_split_rejects_duplicate_ids():
    df = _frame(["a", "b"], ["x", "x"])
    with pytest.raises(ValueError, match="unique"):
        split_queries(df, n_train=1, n_eval=0, seed=0)


# --- Hugging Face datasets ------------------------------------------------------------------

def test_hf_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the optional 'datasets' package is not installed")
    ds = datasets.Dataset.from_list(CUSTOM_ROWS)
    out = tmp_path / "hf_queries"
    ds.save_to_disk(str(out))
    df = load_query_table(str(out), text_column="instruction", id_column="uid")
    _check_custom(df, out)
    with pytest.raises(ValueError, match=r"'question' not found"):
        load_query_table(str(out), text_column="question")
    # a one-split DatasetDict directory works too
    dd_dir = tmp_path / "hf_dict"
    datasets.DatasetDict({"train": ds}).save_to_disk(str(dd_dir))
    df2 = load_query_table(str(dd_dir), text_column="instruction", fmt="hf")
    assert list(df2["prompt"]) == [r["instruction"] for r in CUSTOM_ROWS]
    assert list(df2["query_id"]) == ["q00000", "q00001", "q00002"]


def test_hf_directory_without_datasets_gives_clear_error(tmp_path, monkeypatch):
    import sys

    out = tmp_path / "hf_like"
    out.mkdir()
    (out / "dataset_info.json").write_text("{}", encoding="utf-8")
    (out / "state.json").write_text("{}", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"needs the 'datasets' package"):
        load_query_table(str(out))


def test_module_import_stays_light():
    import subprocess
    import sys

    code = ("import sys, sso.data.queries; "
            "print(sorted(m for m in ('datasets', 'metaflow', 'vllm', 'openai') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"

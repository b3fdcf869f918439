"""Unit tests for sso.data.queries: the shipped query set, the loaders, cleaning and splitting."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pandas as pd
import pytest

from sso.data.queries import (
    SKIP_REASONS,
    DataError,
    builtin_queries_path,
    clean_queries,
    load_query_records,
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
    # CSV locations are 1-based file lines (the header is line 1), as in every other message
    with pytest.raises(ValueError, match=r"dup\.csv:4: duplicate query id 'a' at line 2 and line 4"):
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
        None,                         # c: not a string (null)
        "   \n\t ",                   # d: blank
        42,                           # e: not a string (number)
        "x" * 16,                     # f: too long (max 15)
        "  " + "y" * 15 + "   ",      # g: exactly 15 after strip -> kept
        "hello   THERE",              # h: duplicate of a (case + whitespace)
        "Other",                      # i: kept
        "other",                      # j: duplicate of i
        float("nan"),                 # k: not a string (NaN)
        "a\x00b",                     # l: NUL character
    ]
    ids = list("abcdefghijkl")
    df = _frame(prompts, ids)
    out, report = clean_queries(df, max_chars=15)
    assert report["rows_read"] == 12
    assert report["blank"] == 2
    assert report["not_a_string"] == 3
    assert report["nul_byte"] == 1
    assert report["too_long"] == 1
    assert report["duplicates"] == 2
    assert report["kept"] == 3
    assert report["skipped_ids"] == {"blank": ["b", "d"], "not_a_string": ["c", "e", "k"],
                                     "nul_byte": ["l"], "too_long": ["f"],
                                     "duplicates": ["h", "j"]}
    # without an origin, lines are 1-based positions in the frame
    assert report["line_unit"] == "row"
    assert report["skipped_lines"]["not_a_string"] == [3, 5, 11]
    assert report["skipped_lines"]["duplicates"] == [8, 10]
    assert report["skip_notes"]["not_a_string"] == "got null, number, NaN"
    assert "not_a_string 3 (rows 3, 5, 11; got null, number, NaN)" in report["summary"]
    assert sum(report[r] for r in SKIP_REASONS) + report["kept"] == report["rows_read"]
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


# --- malformed files: every bad input is explained ------------------------------------------

def _lines(*rows: str) -> bytes:
    return "".join(r + "\n" for r in rows).encode("utf-8")


LATIN1 = '{"prompt": "ok"}\n{"prompt": "café au lait"}\n'.encode("latin-1")
HUGE = "x" * 200_000  # above the csv module's default field limit (131072)

# (case id, file name, file bytes, loader kwargs, expected). Expected is either
# ("error", [substrings]) -- "{path}" stands for the file -- or ("skip", reason, 1-based lines).
MALFORMED = [
    ("latin1", "q.jsonl", LATIN1, {},
     ("error", ["{path}:2: not UTF-8", "byte 0xE9", f"byte offset {LATIN1.index(0xE9)}",
                "iconv -f latin1 -t utf-8", '[data] encoding = "latin-1"'])),
    ("latin1_csv", "q.csv", b"prompt\nok\n" + "naïve\n".encode("latin-1"), {},
     ("error", ["{path}:3: not UTF-8", "byte 0xEF", "byte offset 12", "byte 3 of line 3",
                "iconv"])),
    ("wrong_types", "q.jsonl",
     _lines('{"prompt": 42}', '{"prompt": ["a"]}', '{"prompt": null}', '{"prompt": "fine"}',
            '{"prompt": true}', '{"other": "no prompt field"}'), {},
     ("skip", "not_a_string", [1, 2, 3, 5, 6])),
    ("json_array_as_jsonl", "q.jsonl", b'[{"prompt": "a"}, {"prompt": "b"}]\n', {},
     ("error", ["{path}:1:", "JSON array", "one JSON object per line", "q.json", "jq -c"])),
    ("broken_line", "q.jsonl",
     _lines('{"prompt": "a"}', '{"prompt": "b"}', '{"prompt": oops}', '{"prompt": "c"}'), {},
     ("skip", "invalid_json", [3])),
    ("not_jsonl_at_all", "q.jsonl", b'{\n  "prompt": "pretty"\n}\n', {},
     ("error", ["{path}:1: not JSON lines", "3 of 3 non-blank lines", "lines 1, 2, 3"])),
    ("empty", "q.jsonl", b"", {}, ("error", ["{path} is empty (0 bytes)", "no queries"])),
    ("only_blank_lines", "q.csv", b"\n  \n\n", {},
     ("error", ["{path} holds only blank lines", "no queries"])),
    ("huge_prompt", "q.jsonl", _lines('{"prompt": "short"}', '{"prompt": "%s"}' % HUGE), {},
     ("skip", "too_long", [2])),
    ("huge_prompt_csv", "q.csv", _lines("prompt", "short", HUGE), {}, ("skip", "too_long", [3])),
    ("duplicates", "q.jsonl",
     _lines('{"prompt": "Hello"}', '{"prompt": "  hello "}', '{"prompt": "Other"}',
            '{"prompt": "HELLO"}'), {},
     ("skip", "duplicates", [2, 4])),
    ("blank", "q.jsonl", _lines('{"prompt": ""}', "", '{"prompt": "   "}', '{"prompt": "ok"}'),
     {}, ("skip", "blank", [1, 3])),
    ("blank_csv_cells", "q.csv", _lines("id,prompt", '1,"two\nlines"', "2,", "3,ok"),
     {"id_column": "id"}, ("skip", "blank", [4])),
    ("bom_then_latin1", "q.jsonl", b"\xef\xbb\xbf" + LATIN1, {},
     ("error", ["{path}:2: not UTF-8", f"byte offset {3 + LATIN1.index(0xE9)}"])),
    ("nul_raw_jsonl", "q.jsonl", _lines('{"prompt": "a"}', '{"prompt": "b\x00c"}'), {},
     ("skip", "nul_byte", [2])),
    ("nul_escaped_jsonl", "q.jsonl", _lines('{"prompt": "a"}', '{"prompt": "b\\u0000c"}'), {},
     ("skip", "nul_byte", [2])),
    ("nul_csv_cell", "q.csv", _lines("prompt", "a", "b\x00c"), {}, ("skip", "nul_byte", [3])),
    ("utf16_bom", "q.jsonl", '{"prompt": "a"}\n'.encode("utf-16"), {},
     ("error", ["{path}:1: not UTF-8", "UTF-16 byte-order mark", "iconv -f utf-16",
                '[data] encoding = "utf-16"'])),
    ("utf16_no_bom", "q.csv", "prompt\nhello\n".encode("utf-16-le"), {},
     ("error", ["{path}:1: not UTF-8 text", "bytes are NUL", "iconv -f utf-16le"])),
    ("csv_bad_column_case", "q.csv", _lines("Prompt,id", "hi,1"), {},
     ("error", ["{path}: text column 'prompt' not found", "['Prompt', 'id']",
                "Did you mean 'Prompt'?", '[data] text_column = "Prompt"'])),
    ("csv_bad_column_space", "q.csv", _lines("id, prompt", "1, hi"), {},
     ("error", ["{path}: text column 'prompt' not found", "Did you mean ' prompt'?"])),
    ("csv_semicolons", "q.csv", _lines("id;prompt", "1;hi"), {},
     ("error", ["{path}: text column 'prompt' not found", "another separator"])),
    ("csv_wrong_field_count", "q.csv", _lines("id,prompt", "1,fine", "2,an, unquoted comma"),
     {"id_column": "id"}, ("skip", "wrong_field_count", [3])),
    ("csv_bad_quote", "q.csv", b'prompt\n"ok"x"\n', {},
     ("error", ["{path}:2: cannot parse CSV", "double quotes"])),
    ("csv_unclosed_quote", "q.csv", b'prompt\nfine\n"never closed\nrest\nof file\n', {},
     ("error", ["{path}:3: cannot parse CSV", "runs to line 5"])),
    ("not_an_object", "q.jsonl", _lines('{"prompt": "a"}', '"just a string"', "[1, 2]"), {},
     ("skip", "not_an_object", [2, 3])),
    ("no_objects_at_all", "q.jsonl", _lines('"a"', '"b"'), {},
     ("error", ["{path} contains no queries", "not_an_object 2 (lines 1, 2)", "text field"])),
    ("array_items", "q.json", b'[\n {"prompt": "a"},\n 7,\n {"prompt": "b"}\n]\n', {},
     ("skip", "not_an_object", [3])),
    ("array_broken", "q.json", b'[\n {"prompt": "a"},\n {"prompt": oops}\n]\n', {},
     ("error", ["{path}:3: invalid JSON", "fix that line"])),
    ("duplicate_ids", "q.jsonl", _lines('{"id": 1, "prompt": "a"}', '{"id": 1, "prompt": "b"}'),
     {"id_column": "id"},
     ("error", ["{path}:2: duplicate query id '1' at line 1 and line 2", "must be unique"])),
    ("missing_id", "q.csv", _lines("id,prompt", "1,a", ",b"), {"id_column": "id"},
     ("error", ["{path}:3: missing value in id column 'id'"])),
    ("bad_encoding_name", "q.jsonl", _lines('{"prompt": "a"}'), {"encoding": "latin-9000"},
     ("error", ["[data] encoding 'latin-9000'", '"latin-1"'])),
]


@pytest.mark.parametrize("name,filename,content,kwargs,expected", MALFORMED,
                         ids=[c[0] for c in MALFORMED])
def test_malformed_files_are_explained(tmp_path, name, filename, content, kwargs, expected):
    path = tmp_path / filename
    path.write_bytes(content)
    if expected[0] == "error":
        with pytest.raises(DataError) as info:
            records = load_query_records(str(path), **kwargs)
            clean_queries(records.table, max_chars=4000, origin=records)
        msg = str(info.value)
        for part in expected[1]:
            assert part.format(path=path) in msg, (part, msg)
        assert "\n" not in msg.strip()  # one paragraph
        return
    _, reason, lines = expected
    records = load_query_records(str(path), **kwargs)
    _, report = clean_queries(records.table, max_chars=4000, origin=records)
    assert report[reason] == len(lines)
    assert report["skipped_lines"][reason] == lines
    assert report["line_unit"] == "line"
    others = [r for r in SKIP_REASONS if r != reason and report[r]]
    assert others == []
    assert report["rows_read"] == report["kept"] + len(lines)
    listed = ", ".join(map(str, lines))
    assert f"{reason} {len(lines)} (line{'s' if len(lines) > 1 else ''} {listed}" \
        in report["summary"]
    assert report["summary"].startswith(f"queries from {path}: ")


def test_wrong_types_are_named_in_the_note(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(_lines('{"prompt": 42}', '{"prompt": ["a"]}', '{"prompt": null}',
                            '{"prompt": "fine"}', '{"prompt": {"k": 1}}'))
    records = load_query_records(str(path))
    _, report = clean_queries(records.table, max_chars=100, origin=records)
    assert report["skip_notes"]["not_a_string"] == "got number, list, null, object"
    assert report["skipped_ids"]["not_a_string"] == ["q00000", "q00001", "q00002", "q00004"]
    assert report["blank"] == 0 and report["kept"] == 1


def test_invalid_json_is_counted_and_strict_loader_still_raises(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(_lines('{"prompt": "a"}', '{"prompt": "b"', '{"prompt": "c"}'))
    records = load_query_records(str(path))
    assert list(records.table["prompt"]) == ["a", "c"] and records.lines == (1, 3)
    assert dict(records.rejected) == {"invalid_json": (2,)}
    _, report = clean_queries(records.table, max_chars=100, origin=records)
    assert report["invalid_json"] == 1 and report["rows_read"] == 3 and report["kept"] == 2
    assert "invalid_json 1 (line 2; invalid JSON: Expecting ',' delimiter" in report["summary"]
    with pytest.raises(DataError, match=r"q\.jsonl:2: invalid JSON: .*invalid_json 1 \(line 2\)"):
        load_query_table(str(path))


def test_utf8_bom_and_line_separators_are_read(tmp_path):
    path = tmp_path / "q.jsonl"
    # U+2028 inside a JSON string is valid JSON and must not split the line
    path.write_bytes(b"\xef\xbb\xbf" + _lines('{"prompt": "caf\u00e9"}', "",
                                               '{"prompt": "one\u2028two"}', '{"prompt": 5}'))
    records = load_query_records(str(path))
    assert list(records.table["prompt"])[:2] == ["caf\u00e9", "one\u2028two"]
    assert records.lines == (1, 3, 4)
    csv = tmp_path / "q.csv"
    csv.write_bytes(b"\xef\xbb\xbfprompt\nhello\n")
    assert list(load_query_table(str(csv))["prompt"]) == ["hello"]


@pytest.mark.parametrize("encoding", ["latin-1", "LATIN1", "cp1252"])
def test_encoding_option_reads_other_codecs(tmp_path, encoding):
    path = tmp_path / "q.jsonl"
    path.write_bytes(LATIN1)
    df = load_query_table(str(path), encoding=encoding)
    assert list(df["prompt"]) == ["ok", "café au lait"]


def test_parquet_nulls_are_counted_by_row(tmp_path):
    path = tmp_path / "q.parquet"
    pd.DataFrame({"prompt": ["a", None, "c", ""]}).to_parquet(path, index=False)
    records = load_query_records(str(path))
    _, report = clean_queries(records.table, max_chars=100, origin=records)
    assert report["line_unit"] == "row"
    assert report["skipped_lines"] == {**{r: [] for r in SKIP_REASONS},
                                       "not_a_string": [2], "blank": [4]}
    assert "not_a_string 1 (row 2; got null)" in report["summary"]


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl.*\[data\] source"):
        load_query_table(str(tmp_path / "nope.jsonl"))


# --- the load_queries step ------------------------------------------------------------------

def _data_cfg(path, **over):
    from sso.config import DataConfig

    return DataConfig(**{"source": str(path), "n_queries": 2, "n_eval": 1, **over})


def test_step_fails_for_too_few_queries_saying_what_was_skipped(tmp_path):
    from steps.load_queries import load_queries

    path = tmp_path / "q.jsonl"
    path.write_bytes(_lines('{"prompt": 42}', '{"prompt": ["a"]}', '{"prompt": null}',
                            '{"prompt": "fine"}', '{"prompt": oops}', '{"prompt": "fine "}'))
    with pytest.raises(DataError) as info:
        load_queries(_data_cfg(path), seed=0)
    msg = str(info.value)
    assert "asked for 3 queries" in msg and "only 1 are available" in msg
    assert "6 rows read, 1 kept; skipped 5" in msg
    assert "not_a_string 3 (lines 1, 2, 3; got number, list, null)" in msg
    assert "invalid_json 1 (line 5;" in msg and "duplicates 1 (line 6;" in msg
    assert "lower [data] n_queries / n_eval" in msg


def test_step_report_keeps_old_keys_and_logs_one_summary(tmp_path, caplog):
    from steps.load_queries import load_queries

    path = tmp_path / "q.csv"
    path.write_bytes(_lines("prompt", "a", "b", "", "c", "a", "d"))   # line 4 is a blank line
    with caplog.at_level("INFO", logger="sso.data"):
        train, evals, report = load_queries(_data_cfg(path, n_queries=2, n_eval=2), seed=0)
    assert len(train) == 2 and len(evals) == 2
    for key in ("rows_read", "blank", "too_long", "duplicates", "kept", "skipped_ids",
                "n_train", "n_generator", "n_eval", "source"):
        assert key in report
    assert report["rows_read"] == 5 and report["kept"] == 4 and report["duplicates"] == 1
    assert report["skipped_lines"]["duplicates"] == [6]
    records = [r for r in caplog.records if r.name == "sso.data"]
    assert len(records) == 1 and records[0].levelname == "WARNING"
    assert records[0].getMessage() == report["summary"]
    assert report["summary"] == (f"queries from {path}: 5 rows read, 4 kept; skipped 1: "
                                 f"duplicates 1 (line 6; same text as an earlier query "
                                 f"(case and spacing ignored))")


def test_step_passes_the_encoding(tmp_path):
    from steps.load_queries import load_queries

    path = tmp_path / "q.jsonl"
    path.write_bytes(LATIN1 + _lines('{"prompt": "third"}'))
    with pytest.raises(DataError, match="not UTF-8"):
        load_queries(_data_cfg(path), seed=0)
    train, evals, report = load_queries(_data_cfg(path, encoding="latin-1"), seed=0)
    assert set(train["prompt"]) | set(evals["prompt"]) == {"ok", "café au lait", "third"}
    assert report["summary"].endswith("none skipped")

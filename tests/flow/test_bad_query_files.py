"""Bad query files through the real flow entry: a fatal one ends in one paragraph naming the file,
the line and the fix (no traceback, no "Internal error"); a usable one is read with every skipped
row counted under its reason, with its 1-based line, in the ``query_report`` artifact.

Each case writes a query file and a config ``[data] source = "<file>"`` into ``tmp_path`` and runs
``python flows/sso_flow.py --config cfg <toml> run``. A usable file is stopped cheaply right after
``load_queries`` by the ``SSO_FAIL_AT_STEP=generate_principles`` test hook.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FLOW, client_for  # noqa: E402  (tests/flow/conftest.py)

pytestmark = [pytest.mark.flow]

REASONS = ("invalid_json", "not_an_object", "wrong_field_count", "nul_byte", "not_a_string",
           "blank", "too_long", "duplicates")
CONFIG = """\
[data]
source = {source}
n_queries = 4
n_eval = 2
max_query_chars = 200
[sampling]
shards = 1
"""


def _q(text) -> str:
    return json.dumps({"prompt": text})


GOOD = [_q(f"Explain idea number {i} in one sentence.") for i in range(8)]


def _jl(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


LATIN1 = "\n".join(GOOD[:2] + ['{"prompt": "Un café, s\'il vous plaît."}']).encode("latin-1") + b"\n"
LATIN1_OFFSET = LATIN1.index(b"\xe9")        # 0-based, from the start of the file
LATIN1_COLUMN = LATIN1_OFFSET - LATIN1.rindex(b"\n", 0, LATIN1_OFFSET)   # 1-based, in line 3


def _run(tmp_path: Path, name: str, data: bytes, **extra_env) -> tuple[subprocess.CompletedProcess, str]:
    (tmp_path / name).write_bytes(data)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(CONFIG.format(source=json.dumps(str(tmp_path / name))))
    env = {**os.environ, "METAFLOW_HOME": str(tmp_path), "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    for key in ("SSO_DEBUG", "SSO_FAIL_AT_STEP"):
        env.pop(key, None)
    env.update(extra_env)
    done = subprocess.run([sys.executable, FLOW, "--config", "cfg", str(cfg), "run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    return done, done.stdout + done.stderr


# (file name, bytes, fragments the one-paragraph message must hold)
FATAL = [
    pytest.param("latin1.jsonl", LATIN1,
                 ["latin1.jsonl:3: not UTF-8", f"byte offset {LATIN1_OFFSET}", f"(byte {LATIN1_COLUMN} of line 3)",
                  "iconv -f latin1 -t utf-8 latin1.jsonl", '[data] encoding = "latin-1"'], id="latin1"),
    pytest.param("array.jsonl", json.dumps([{"prompt": "a"}, {"prompt": "b"}], indent=2).encode(),
                 ["array.jsonl:1: this file holds a JSON array", "Rename it to array.json", "jq -c '.[]'"],
                 id="json-array-in-jsonl"),
    pytest.param("mostly_broken.jsonl", _jl(GOOD[0], '{"prompt": "unterminated', "plain text",
                                            "{'prompt': 'single quotes'}"),
                 ["mostly_broken.jsonl:2: not JSON lines", "3 of 4 non-blank lines", "lines 2, 3, 4",
                  "one JSON object per line"], id="not-json-lines"),
    pytest.param("empty.jsonl", b"", ["empty.jsonl is empty (0 bytes)", "Point [data] source at a file"],
                 id="empty"),
    pytest.param("few.jsonl", _jl(*GOOD[:3], _q(""), '{"prompt": 7}', GOOD[0]),
                 ["asked for 6 queries (n_train=4 + n_eval=2) but only 3 are available", "few.jsonl",
                  "not_a_string 1 (line 5; got number)", "blank 1 (line 4;", "duplicates 1 (line 6;",
                  "lower [data] n_queries / n_eval"], id="too-few-usable"),
]


@pytest.mark.parametrize("name, data, expected", FATAL)
def test_fatal_query_file_stops_in_one_paragraph(tmp_path, name, data, expected):
    done, out = _run(tmp_path, name, data)
    assert done.returncode != 0
    assert "Invalid data in step load_queries:" in out
    for fragment in expected:
        assert fragment in out, fragment
    assert "(fix the file or config; SSO_DEBUG=1 shows the traceback)" in out
    assert "Traceback" not in out and "Internal error" not in out
    assert "retry" not in out                          # load_queries has no @retry: one attempt


# (file name, bytes, {reason: 1-based lines skipped}); every other reason must count 0
SKIPS = [
    pytest.param("bom.jsonl", b"\xef\xbb\xbf" + _jl(*GOOD), {}, id="utf8-bom"),
    pytest.param("types.jsonl", _jl(*GOOD[:3], '{"prompt": 42}', '{"prompt": ["a", "b"]}', '{"prompt": null}',
                                    *GOOD[3:]), {"not_a_string": [4, 5, 6]}, id="wrong-types"),
    pytest.param("broken.jsonl", _jl(*GOOD[:3], '{"prompt": "unterminated', *GOOD[3:]), {"invalid_json": [4]},
                 id="broken-json-line"),
    pytest.param("huge.jsonl", _jl(*GOOD, _q("x" * 300)), {"too_long": [9]}, id="too-long"),
    pytest.param("dups.jsonl", _jl(*GOOD, _q("EXPLAIN idea  number 1 in one sentence."), GOOD[2]),
                 {"duplicates": [9, 10]}, id="duplicates"),
    pytest.param("blank.jsonl", _jl(GOOD[0], "", GOOD[1], _q(""), _q("  \t "), *GOOD[2:]), {"blank": [4, 5]},
                 id="blank-prompts"),           # (line 2 is a blank line: not a row, does not shift numbers)
    pytest.param("nul.jsonl", _jl(*GOOD) + b'{"prompt": "a\x00b"}\n' + _jl(_q("esc \x00 aped")),
                 {"nul_byte": [9, 10]}, id="nul-bytes"),   # a raw NUL byte, and a \u0000 escape
]


@pytest.mark.parametrize("name, data, skipped", SKIPS)
def test_usable_query_file_counts_every_skip_with_its_line(tmp_path, name, data, skipped):
    done, out = _run(tmp_path, name, data, SSO_FAIL_AT_STEP="generate_principles")
    assert done.returncode != 0 and "SSO_FAIL_AT_STEP=generate_principles" in out   # stopped after load_queries
    from metaflow import Flow

    client_for(tmp_path)
    task = Flow("SSOFlow").latest_run["load_queries"].task
    assert task.successful
    report = task["query_report"].data
    assert report["rows_read"] == 8 + sum(len(v) for v in skipped.values())
    assert report["kept"] == 8 and report["line_unit"] == "line"
    for reason in REASONS:
        assert report[reason] == len(skipped.get(reason, [])), reason
        assert report["skipped_lines"][reason] == skipped.get(reason, []), reason
    assert f"queries: queries from {tmp_path / name}: " in out      # the summary line is printed


def test_debug_env_shows_the_original_traceback(tmp_path):
    done, out = _run(tmp_path, "latin1.jsonl", LATIN1, SSO_DEBUG="1")
    assert done.returncode != 0
    assert "Traceback" in out and "sso.data.readers.DataError: " in out and "latin1.jsonl:3: not UTF-8" in out
    assert "Invalid data in step" not in out

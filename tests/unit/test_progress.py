"""sso.progress: a live bar on a terminal, plain throttled lines in log files."""

from __future__ import annotations

import io

import pytest

from sso.progress import log_interval, progress_bar


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_log_file_gets_whole_lines_without_carriage_returns():
    out = io.StringIO()
    with progress_bar(40, "judge[sso]", unit="req", file=out, mininterval=0) as bar:
        for _ in range(40):
            bar.update(1)
            bar.set_postfix(loss="0.5", refresh=False)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("judge[sso]:   0%") and "0/40" in lines[0]
    assert "40/40" in lines[-1] and "req/s" in lines[-1]           # rate
    assert sum("40/40" in line for line in lines) == 1               # the total once, not twice
    assert all(line.startswith("judge[sso]:") for line in lines)


def test_log_lines_are_throttled_to_the_interval():
    out = io.StringIO()
    with progress_bar(1000, "train sso", file=out, mininterval=3600) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines                                    # start and end only
    assert "1000/1000" in lines[1]


def test_eta_is_shown_while_running():
    out = io.StringIO()
    bar = progress_bar(10, "sample shard 0", unit="prompt", file=out, mininterval=0)
    bar.update(5)
    assert "5/10 [" in out.getvalue() and "<" in out.getvalue().splitlines()[-1]   # elapsed<remaining
    bar.close()


def test_terminal_gets_tqdm_in_place_updates():
    tty = _Tty()
    with progress_bar(3, "x", file=tty, mininterval=0) as bar:
        bar.update(3)
    assert "\r" in tty.getvalue()


def test_disabled_bar_prints_nothing_but_counts():
    out = io.StringIO()
    bar = progress_bar(5, "x", file=out, enabled=False)
    bar.update(2)
    bar.close()
    assert out.getvalue() == ""


@pytest.mark.parametrize("raw, expected", [("", 15.0), ("  ", 15.0), ("2.5", 2.5), ("0", 0.0)])
def test_interval_from_environment(monkeypatch, raw, expected):
    monkeypatch.setenv("SSO_PROGRESS_INTERVAL", raw)
    assert log_interval() == expected


@pytest.mark.parametrize("raw", ["soon", "-1", "1s"])
def test_bad_interval_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv("SSO_PROGRESS_INTERVAL", raw)
    with pytest.raises(ValueError, match="SSO_PROGRESS_INTERVAL"):
        log_interval()

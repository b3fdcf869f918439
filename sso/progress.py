"""Progress bars that suit where they are written: a terminal or a task log file.

On a terminal, :func:`progress_bar` is a plain tqdm bar. Anywhere else (a Metaflow task log, a
CI log, a pipe) it prints one complete line per refresh, at most every ``SSO_PROGRESS_INTERVAL``
seconds (default 15), with no carriage returns or cursor movement, and a final line with the total
time and rate when the bar closes::

    train sso:  40%|####      | 8/20 [00:31<00:46,  3.9s/it, loss=0.6821]

Use it like tqdm: ``with progress_bar(total=n, desc="judge[sso]", unit="req") as bar:
bar.update(k)``. ``enabled=False`` returns a bar that prints nothing (still countable).
"""

from __future__ import annotations

import os
import sys
from typing import IO

INTERVAL_ENV = "SSO_PROGRESS_INTERVAL"
DEFAULT_LOG_INTERVAL_S = 15.0
TTY_INTERVAL_S = 0.5


class _LineStream:
    """A file for tqdm that turns each in-place refresh into one plain line."""

    def __init__(self, target: IO[str]):
        self._target = target

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line:
            self._target.write(line + "\n")
            self._target.flush()
        return len(text)

    def flush(self) -> None:
        self._target.flush()


def _log_bar_class():
    from tqdm import tqdm as plain_tqdm   # not tqdm.auto: that may pick a notebook widget

    class LogBar(plain_tqdm):
        """No second final line when the last refresh already showed the total."""

        def close(self):
            if not self.disable and self.total is not None and self.last_print_n == self.n == self.total:
                self.leave = False
            super().close()

    return LogBar


def _LogBar(**kwargs):  # noqa: N802 - a class built lazily (tqdm is imported only when used)
    return _log_bar_class()(**kwargs)


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def log_interval() -> float:
    """Seconds between progress lines in log files (``SSO_PROGRESS_INTERVAL``, default 15)."""
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_LOG_INTERVAL_S
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{INTERVAL_ENV} must be >= 0, got {raw!r}")
    return value


def progress_bar(total: int | None, desc: str, *, unit: str = "it", initial: int = 0,
                 enabled: bool = True, file: IO[str] | None = None, mininterval: float | None = None):
    """A tqdm bar for ``total`` items, live on a terminal and line-per-refresh in log files.

    ``file`` defaults to stderr; ``mininterval`` to 0.5 s on a terminal and :func:`log_interval`
    elsewhere. The returned object is a ``tqdm`` (``update``, ``set_postfix``, ``close``, ``with``).
    """
    from tqdm.auto import tqdm

    target = file if file is not None else sys.stderr
    if _is_tty(target):
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled,
                    file=target, mininterval=TTY_INTERVAL_S if mininterval is None else mininterval,
                    dynamic_ncols=True)
    interval = log_interval() if mininterval is None else mininterval
    return _LogBar(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled,
                      file=_LineStream(target), mininterval=interval,
                      maxinterval=max(interval, 10.0), miniters=1, ascii=True, ncols=100,
                      leave=True, dynamic_ncols=False)

"""``@user_errors``: a user-fixable error raised in a step ends the task with one clear paragraph.

A bad query file (:class:`sso.data.readers.DataError` and its subclasses) or a bad config value
(:class:`sso.config_rules.ConfigError`) already carries a message naming the file, the 1-based line
(or the TOML key) and the fix. Raised plainly inside a task, Metaflow prints it at the bottom of an
"Internal error" banner and a 40-line traceback through its own CLI. This decorator turns it into
a :class:`UserError`, a ``MetaflowException`` whose ``headline`` Metaflow's task CLI prints without
a traceback::

    Invalid data in step load_queries:
    /data/q.jsonl:3: not UTF-8: byte 0xE9 at byte offset 41 ... or set [data] encoding = ...
    (fix the file or config; SSO_DEBUG=1 shows the traceback)

and the task fails (exit code 1, ``attempt_ok`` False, the run ends with "Step failure").
``$SSO_DEBUG`` set (as for the config parser in ``sso_flow.py``) lets the original exception
propagate unchanged, traceback included; any other exception type always propagates unchanged.

Retries: Metaflow 2.19 decides a retry from the task's exit code alone. The one code it does not
retry (``METAFLOW_EXIT_DISALLOW_RETRY``, 202) makes the local runtime end the run with "Internal
error: The terminal step end was not successful", and is not passed through by Batch/Kubernetes
jobs. So a step with ``@retry`` re-runs once more after a user error (it fails the same way,
quickly) rather than hiding the message behind a misleading banner; the steps that read user files
(``load_queries``) have no ``@retry``.

``@compute_defaults`` (``sso_decorators.py``) adds this decorator to every step. The ``sso`` imports
happen when a step fails, not at module load: this module is imported before ``sso_flow.py`` puts
the repository root on ``sys.path``. Like every file beside the flow file, it ships with remote
tasks in Metaflow's code package.
"""

import os

from metaflow import user_step_decorator
from metaflow.exception import MetaflowException

DEBUG_ENV = "SSO_DEBUG"   # set (e.g. to 1) for the original exception and its traceback
FIX_HINT = f"(fix the file or config; {DEBUG_ENV}=1 shows the traceback)"


class UserError(MetaflowException):
    """A user-fixable error in a step: Metaflow prints ``headline:`` and the message, no traceback."""

    headline = "Invalid input"

    def __init__(self, headline: str, message: str):
        super().__init__(message)
        self.headline = headline


def _user_error_kind(exc: BaseException) -> str | None:
    """``"data"`` / ``"config"`` for a user-fixable error, else None."""
    try:
        from sso.config_rules import ConfigError
        from sso.data.readers import DataError
    except ImportError:   # pragma: no cover - the flow puts the repo root on sys.path
        return None
    if isinstance(exc, DataError):
        return "data"
    if isinstance(exc, ConfigError):
        return "config"
    return None


def as_user_error(step_name: str, exc: BaseException) -> UserError | None:
    """The :class:`UserError` that reports ``exc``, or None if ``exc`` is not user-fixable."""
    kind = _user_error_kind(exc)
    if kind is None:
        return None
    return UserError(f"Invalid {kind} in step {step_name}", f"{exc}\n{FIX_HINT}")


@user_step_decorator
def user_errors(step_name, flow, inputs=None, attributes=None):
    """Report a DataError / ConfigError from the step body as one paragraph, without a traceback."""
    try:
        yield
    except Exception as exc:
        err = None if os.environ.get(DEBUG_ENV) else as_user_error(step_name, exc)
        if err is None:
            raise
        raise err from None

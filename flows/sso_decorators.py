"""Config-driven step decorators for ``sso_flow.py`` (Metaflow step mutators).

Beside the flow file on purpose: Metaflow ships the flow's directory with every remote task, and
this module, like the flow file, is part of the Metaflow layer (``sso/`` and ``steps/`` never
import metaflow).

``@compute(resources=cfg.resources.<table>)`` turns one ``[resources.<table>]`` config table into the
decorators Metaflow understands, when the flow is parsed (for ``run``, ``resume``, every remote
task and every deploy command alike)::

    cpu, memory, gpu      -> @resources(cpu=..., memory=..., gpu=...)   (local runs ignore it;
                             --with batch / --with kubernetes turn it into the job's requests)
    timeout_minutes > 0   -> @timeout(minutes=...)   (0 = no timeout; on Batch / Kubernetes it is
                             also the job's attempt duration instead of the 5-day default)
    image, queue,         -> set on the step's @batch / @kubernetes decorator, *if the step has
    shared_memory            one* (from `run --with batch`, or added by `step-functions create` /
                             `argo-workflows create`); a value in the table wins over the --with
                             value, empty / 0 keeps the --with value or the Metaflow profile's
                             default. Local runs never see them.

``@compute_defaults("cfg")`` on the flow class gives every step that has no ``@compute`` of its own
``@compute(resources=cfg.resources.default)``, so no step falls back to Metaflow's built-in
defaults (e.g. the plain ``python:3.x`` image, which lacks this package's dependencies). It also
gives every step ``@failure_point``: a no-op unless ``SSO_FAIL_AT_STEP`` names the step, in which
case the step raises before its body runs (how the tests exercise ``@retry`` and ``resume``).

``@datastore_checkpoints`` (``sso_checkpoints.py``) on a training step gives it a checkpoint directory
(``os.environ["SSO_CHECKPOINT_DIR"]``) that a retried attempt finds again, also when the retry runs
in a new container (with the S3 datastore the newest checkpoint is copied to S3 while training),
and on ``resume`` the origin run's directories of the same step, where the trainer finds the
failed run's last checkpoint when its fingerprint matches.

``@secrets_from_config(judge=cfg.judge)`` adds Metaflow's ``@secrets(sources=[judge.secrets],
role=judge.secrets_role)`` when ``[judge] secrets`` is non-empty: the remote task fetches the API key
from the secrets manager at start; the deployment spec holds only the secret's *name*. With the
default empty list nothing is added and a local run reads the key from its own environment.
"""

import os

from metaflow import FlowMutator, StepMutator, user_step_decorator
from sso_errors import user_errors  # one-paragraph DataError / ConfigError from any step

FAIL_ENV = "SSO_FAIL_AT_STEP"   # test hook: name of a step that raises (exercises retry and resume)

# Attributes of the platform decorators that a [resources.*] table may set; queue is Batch only.
_PLATFORM_KEYS = {"batch": ("image", "queue", "shared_memory"),
                  "kubernetes": ("image", "shared_memory")}


def _table(value) -> dict:
    """A resolved config table (ConfigValue or dict) as a plain dict."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return dict(value)


class compute(StepMutator):
    """``@compute(resources=cfg.resources.sample)``: resources, timeout and remote image/queue/shm.

    The table is passed by keyword: a positional config reference would be taken by Metaflow for
    the decorated step function.
    """

    def init(self, resources):
        self._res = _table(resources)

    def mutate(self, mutable_step):
        res = self._res
        mutable_step.add_decorator(
            "resources", deco_kwargs={"cpu": res["cpu"], "memory": res["memory"], "gpu": res["gpu"]},
            duplicates=mutable_step.IGNORE)          # an explicit @resources in the code wins
        if res.get("timeout_minutes", 0) > 0:
            mutable_step.add_decorator("timeout", deco_kwargs={"minutes": res["timeout_minutes"]},
                                       duplicates=mutable_step.IGNORE)
        for platform, keys in _PLATFORM_KEYS.items():
            wanted = {k: res[k] for k in keys if res.get(k)}
            if not wanted:
                continue
            # Update the existing decorator in place rather than replacing it (add_decorator with
            # OVERRIDE): a replacement counts as "inserted by a mutator", and Metaflow does not
            # forward those as --with to the task in the container, which then runs without its
            # @batch (no AWS_BATCH_* metadata, no local-metadata sync: the run fails after the
            # first job). MutableStep has no public handle on a decorator object, hence _my_step.
            for deco in mutable_step._my_step.decorators:
                if deco.name == platform:
                    deco.attributes.update(wanted)


class secrets_from_config(StepMutator):
    """``@secrets_from_config(judge=cfg.judge)``: Metaflow ``@secrets`` from ``[judge] secrets``."""

    def init(self, judge):
        judge = _table(judge)
        self._sources = list(judge.get("secrets") or [])
        self._role = judge.get("secrets_role") or None

    def mutate(self, mutable_step):
        if self._sources:
            mutable_step.add_decorator("secrets", deco_kwargs={"sources": self._sources, "role": self._role},
                                       duplicates=mutable_step.IGNORE)


class compute_defaults(FlowMutator):
    """``@compute_defaults("cfg")``: ``[resources.default]`` for every step without ``@compute``."""

    def init(self, config_name="cfg"):
        self._config_name = config_name

    def pre_mutate(self, mutable_flow):
        configs = dict(mutable_flow.configs)
        if configs.get(self._config_name) is None:
            return
        default = _table(configs[self._config_name]["resources"]["default"])
        for _name, mutable_step in mutable_flow.steps:
            if not mutable_step.has_decorator("compute"):
                mutable_step.add_decorator(compute, deco_kwargs={"resources": default})
            mutable_step.add_decorator(failure_point, duplicates=mutable_step.IGNORE)
            mutable_step.add_decorator(user_errors, duplicates=mutable_step.IGNORE)


@user_step_decorator
def failure_point(step_name, flow, inputs=None, attributes=None):
    """Raise in the step that ``$SSO_FAIL_AT_STEP`` names (read when the task runs); else a no-op.
    ``<step>@<t>`` fails only iteration t of a looping step (``online_iteration``)."""
    target, _, at = os.environ.get(FAIL_ENV, "").partition("@")
    if target == step_name and (not at or int(at) == getattr(flow, "iteration", 0) + 1):
        raise RuntimeError(f"{FAIL_ENV}={os.environ[FAIL_ENV]}: injected failure")
    yield


KILL_ENV = "SSO_KILL_AFTER_CHECKPOINT"   # test hook: "<step>:<k>", a machine lost after checkpoint k


def kill_hook(step_name: str, on_log):
    """``on_log`` for the trainer, which, when ``$SSO_KILL_AFTER_CHECKPOINT`` is ``<step>:<k>`` for
    this step, SIGKILLs the local Metaflow runtime and this task at the first logged optimizer step
    after ``k`` (with ``checkpoint_every`` dividing ``k`` and ``log_every = 1``, checkpoint ``k``
    is on disk): a lost machine, no retry, no cleanup; the run can only be continued by ``resume``.
    Anything else: ``on_log`` unchanged."""
    import signal

    target, _, k = os.environ.get(KILL_ENV, "").partition(":")
    if target != step_name or not k.isdigit():
        return on_log

    def log_or_die(row):
        if row["step"] > int(k):
            print(f"{KILL_ENV}={target}:{k}: killing the runtime and the task at step {row['step']}", flush=True)
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        on_log(row)

    return log_or_die

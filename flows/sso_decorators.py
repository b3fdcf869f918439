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

``@datastore_checkpoints`` on a training step gives it a checkpoint directory
(``os.environ["SSO_CHECKPOINT_DIR"]``) that a retried attempt finds again, also when the retry runs
in a new container: with the S3 datastore the newest checkpoint is copied to S3 while training.

``@secrets_from_config(judge=cfg.judge)`` adds Metaflow's ``@secrets(sources=[judge.secrets],
role=judge.secrets_role)`` when ``[judge] secrets`` is non-empty: the remote task fetches the API key
from the secrets manager at start; the deployment spec holds only the secret's *name*. With the
default empty list nothing is added and a local run reads the key from its own environment.
"""

import os

from metaflow import FlowMutator, StepMutator, user_step_decorator

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


@user_step_decorator
def failure_point(step_name, flow, inputs=None, attributes=None):
    """Raise in the step that ``$SSO_FAIL_AT_STEP`` names (read when the task runs); else a no-op."""
    if os.environ.get(FAIL_ENV) == step_name:
        raise RuntimeError(f"{FAIL_ENV}={step_name}: injected failure")
    yield


# ----------------------------------------------------------------------------------------------
# Training checkpoints that survive a retried attempt on another machine
# ----------------------------------------------------------------------------------------------

CHECKPOINT_ENV = "SSO_CHECKPOINT_DIR"
_DONE = ".done"


@user_step_decorator
def datastore_checkpoints(step_name, flow, inputs=None, attributes=None):
    """``@datastore_checkpoints``: a checkpoint directory that outlives the attempt.

    The step finds the directory in ``os.environ["SSO_CHECKPOINT_DIR"]`` and hands it to the
    trainer (``checkpoint_dir=``). The trainer writes ``step-NNNNNNNN/`` sub-directories
    atomically; what happens to them depends on the datastore:

    - local datastore: the directory is ``<tmp>/sso-checkpoints/<flow>/<run>/<step>/<task>``, the
      same for every attempt of the task, so a retried attempt (same machine) finds it;
    - S3 datastore (``--with batch`` / ``--with kubernetes`` / Step Functions / Argo, where a retry
      is a new container): the directory is a fresh scratch directory, the newest complete
      checkpoint is copied to ``<METAFLOW_DATATOOLS_S3ROOT>/<flow>/<run>/sso-checkpoints/<step>/
      <task>/`` every ``interval`` seconds (default 60) and when the step ends (success or
      failure), and a retried attempt starts by downloading the newest one.

    ``resume`` starts a new run, hence fresh checkpoints (as metaflow-checkpoint's default).
    """
    import os
    import shutil
    import tempfile

    from metaflow import current
    from metaflow.metaflow_config import DATATOOLS_S3ROOT

    interval = float((attributes or {}).get("interval", 60))
    parts = (current.flow_name, str(current.run_id), step_name, str(current.task_id))
    ds_type = getattr(getattr(flow, "_datastore", None), "TYPE", "local")
    if ds_type == "s3" and DATATOOLS_S3ROOT:
        local = tempfile.mkdtemp(prefix=f"sso-ckpt-{step_name}-")
        remote = "/".join([DATATOOLS_S3ROOT.rstrip("/"), parts[0], parts[1], "sso-checkpoints", *parts[2:]]) + "/"
        restored = _restore_checkpoint(remote, local)
        print(f"@datastore_checkpoints: {remote} -> {local}" + (f" (restored {restored})" if restored else ""))
        uploader = _CheckpointUploader(remote, local, interval)
        uploader.start()
    else:
        local = os.path.join(tempfile.gettempdir(), "sso-checkpoints", *parts)
        os.makedirs(local, exist_ok=True)
        uploader = None
    os.environ[CHECKPOINT_ENV] = local
    ok = False
    try:
        yield
        ok = True
    finally:
        os.environ.pop(CHECKPOINT_ENV, None)
        if uploader is not None:
            uploader.stop()
            uploader.upload_newest()
            shutil.rmtree(local, ignore_errors=True)
        elif ok:
            _remove_local_checkpoints(local)


def _remove_local_checkpoints(local: str) -> None:
    """Delete a finished task's local checkpoint dir and the then empty <flow>/<run>/<step> dirs."""
    import os
    import shutil
    import tempfile

    shutil.rmtree(local, ignore_errors=True)
    root = os.path.join(tempfile.gettempdir(), "sso-checkpoints")
    parent = os.path.dirname(local)
    while parent.startswith(root + os.sep):
        try:
            os.rmdir(parent)
        except OSError:
            break
        parent = os.path.dirname(parent)


def _complete_checkpoints(local: str) -> list[str]:
    """Names of the finished checkpoint directories under ``local``, oldest first."""
    import os

    return sorted(name for name in os.listdir(local)
                  if not name.startswith(".") and os.path.isdir(os.path.join(local, name)))


def _restore_checkpoint(remote: str, local: str) -> str | None:
    """Copy the newest checkpoint uploaded under ``remote`` into ``local``; its name or None."""
    import os
    import shutil
    import tempfile

    from metaflow import S3

    with S3(s3root=remote, tmproot=tempfile.gettempdir()) as s3:
        done = sorted(o.key[:-len(_DONE)] for o in s3.list_recursive() if o.key.endswith(_DONE))
        if not done:
            return None
        for obj in s3.get_recursive([done[-1] + "/"]):     # keys relative to that prefix
            target = os.path.join(local, done[-1], obj.key)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(obj.path, target)
    return done[-1]


class _CheckpointUploader:
    """Uploads the newest complete checkpoint directory, then writes its ``<name>.done`` marker."""

    def __init__(self, remote: str, local: str, interval: float):
        import threading

        self.remote, self.local, self.interval = remote, local, interval
        self.uploaded: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sso-ckpt-upload")

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=600)

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.upload_newest()

    def upload_newest(self):
        import io
        import os
        import tempfile

        from metaflow import S3

        try:
            names = _complete_checkpoints(self.local)
            if not names or names[-1] in self.uploaded:
                return
            name = names[-1]
            root = os.path.join(self.local, name)
            files = [(os.path.relpath(os.path.join(d, f), self.local), os.path.join(d, f))
                     for d, _dirs, fs in os.walk(root) for f in fs]
            with S3(s3root=self.remote, tmproot=tempfile.gettempdir()) as s3:
                s3.put_files(files)
                s3.put(name + _DONE, io.BytesIO(b""))
            self.uploaded.add(name)
        except (FileNotFoundError, OSError) as exc:
            # The trainer replaced the checkpoint while it was being copied: the next one will do.
            print(f"@datastore_checkpoints: upload skipped ({exc})")

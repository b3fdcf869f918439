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


# ----------------------------------------------------------------------------------------------
# Training checkpoints that survive a retried attempt on another machine, and a resumed run
# ----------------------------------------------------------------------------------------------

CHECKPOINT_ENV = "SSO_CHECKPOINT_DIR"
ORIGINS_ENV = "SSO_CHECKPOINT_ORIGINS"   # the origin run's checkpoint roots on resume (os.pathsep-separated)
_DONE = ".done"


@user_step_decorator
def datastore_checkpoints(step_name, flow, inputs=None, attributes=None):
    """``@datastore_checkpoints``: checkpoints that outlive the attempt and the run.

    The step finds its checkpoint root in ``os.environ["SSO_CHECKPOINT_DIR"]`` and, on ``resume``,
    the origin run's roots of the same step in ``os.environ["SSO_CHECKPOINT_ORIGINS"]``
    (``os.pathsep``-separated), and hands both to the trainer (``checkpoint_dir=``,
    ``resume_dirs=``). The trainer writes ``<fingerprint>/step-NNNNNNNN/`` sub-directories
    atomically and resumes from the newest one whose fingerprint (data, config, seed) is its own.
    What happens to them depends on the datastore:

    - local datastore: the root is ``<tmp>/sso-checkpoints/<flow>/<run>/<step>/<task>``, the same
      for every attempt of the task, so a retried attempt finds it; the origin roots of a resumed
      run are the origin run's ``<step>/*`` directories (a failed run's are never removed);
    - S3 datastore (``--with batch`` / ``--with kubernetes`` / Step Functions / Argo, where a retry
      is a new container): the root is a fresh scratch directory, the newest complete checkpoint
      of each fingerprint is copied to ``<METAFLOW_DATATOOLS_S3ROOT>/<flow>/<run>/sso-checkpoints/
      <step>/<task>/`` every ``interval`` seconds (default 60) and when the step ends (success or
      failure); a retried attempt starts by downloading the newest ones, and a resumed run
      downloads the origin run's (``<origin run>/sso-checkpoints/<step>/``) into a scratch directory.
    """
    import os
    import shutil
    import tempfile

    from metaflow import current
    from metaflow.metaflow_config import DATATOOLS_S3ROOT

    interval = float((attributes or {}).get("interval", 60))
    flow_name, run_id, origin = current.flow_name, str(current.run_id), current.origin_run_id
    ds_type = getattr(getattr(flow, "_datastore", None), "TYPE", "local")
    scratch = []
    if ds_type == "s3" and DATATOOLS_S3ROOT:
        base = "/".join([DATATOOLS_S3ROOT.rstrip("/"), flow_name])
        local = tempfile.mkdtemp(prefix=f"sso-ckpt-{step_name}-")
        remote = f"{base}/{run_id}/sso-checkpoints/{step_name}/{current.task_id}/"
        restored = _restore_checkpoints(remote, local)
        print(f"@datastore_checkpoints: {remote} -> {local}" + (f" (restored {restored})" if restored else ""))
        origins = []
        if origin and str(origin) != run_id:
            origin_local = tempfile.mkdtemp(prefix=f"sso-ckpt-origin-{step_name}-")
            found = _restore_checkpoints(f"{base}/{origin}/sso-checkpoints/{step_name}/", origin_local)
            origins = _task_roots(origin_local)
            scratch.append(origin_local)
            print(f"@datastore_checkpoints: origin run {origin}: {found or 'no checkpoints'}")
        uploader = _CheckpointUploader(remote, local, interval)
        uploader.start()
    else:
        root = os.path.join(tempfile.gettempdir(), "sso-checkpoints", flow_name)
        local = os.path.join(root, run_id, step_name, str(current.task_id))
        os.makedirs(local, exist_ok=True)
        origins = _task_roots(os.path.join(root, str(origin), step_name)) if origin and str(origin) != run_id else []
        uploader = None
    os.environ[CHECKPOINT_ENV] = local
    os.environ[ORIGINS_ENV] = os.pathsep.join(origins)
    ok = False
    try:
        yield
        ok = True
    finally:
        os.environ.pop(CHECKPOINT_ENV, None)
        os.environ.pop(ORIGINS_ENV, None)
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)
        if uploader is not None:
            uploader.stop()
            uploader.upload_newest()
            shutil.rmtree(local, ignore_errors=True)
        elif ok:
            _remove_local_checkpoints(local)


def checkpoint_dirs() -> tuple[str | None, list[str]]:
    """(this task's checkpoint root, the origin run's roots) as ``@datastore_checkpoints`` set them."""
    origins = os.environ.get(ORIGINS_ENV, "")
    return os.environ.get(CHECKPOINT_ENV), [p for p in origins.split(os.pathsep) if p]


def _task_roots(step_dir: str) -> list[str]:
    """The per-task checkpoint roots under one step's directory (any task of that step)."""
    import os

    if not os.path.isdir(step_dir):
        return []
    return sorted(os.path.join(step_dir, d) for d in os.listdir(step_dir)
                  if not d.startswith(".") and os.path.isdir(os.path.join(step_dir, d)))


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


def _newest_checkpoints(local: str) -> list[str]:
    """The newest complete ``step-*`` directory of each group under ``local`` (relative paths:
    ``step-N`` directly below, or ``<fingerprint>/step-N``, ``<task>/<fingerprint>/step-N``)."""
    import os

    newest: dict[str, str] = {}
    for dirpath, dirnames, _files in os.walk(local):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for d in [d for d in dirnames if d.startswith("step-")]:
            rel = os.path.relpath(os.path.join(dirpath, d), local)
            group = os.path.dirname(rel)
            if rel > newest.get(group, ""):
                newest[group] = rel
        dirnames[:] = [d for d in dirnames if not d.startswith("step-")]
    return sorted(newest.values())


def _restore_checkpoints(remote: str, local: str) -> list[str]:
    """Copy the newest uploaded checkpoint of each group under ``remote`` into ``local``."""
    import os
    import posixpath
    import shutil
    import tempfile

    from metaflow import S3

    with S3(s3root=remote, tmproot=tempfile.gettempdir()) as s3:
        done = [o.key[:-len(_DONE)] for o in s3.list_recursive() if o.key.endswith(_DONE)]
        newest: dict[str, str] = {}
        for name in done:
            group = posixpath.dirname(name)
            newest[group] = max(newest.get(group, ""), name)
        for name in sorted(newest.values()):
            for obj in s3.get_recursive([name + "/"]):     # keys relative to that prefix
                target = os.path.join(local, *name.split("/"), obj.key)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(obj.path, target)
    return sorted(newest.values())


class _CheckpointUploader:
    """Uploads the newest complete checkpoint directory of each group, then its ``.done`` marker."""

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
        for name in _newest_checkpoints(self.local):
            if name not in self.uploaded:
                self._upload(name)

    def _upload(self, name: str) -> None:
        import io
        import os
        import tempfile

        from metaflow import S3

        try:
            root = os.path.join(self.local, name)
            files = [(os.path.relpath(os.path.join(d, f), self.local).replace(os.sep, "/"), os.path.join(d, f))
                     for d, _dirs, fs in os.walk(root) for f in fs]
            with S3(s3root=self.remote, tmproot=tempfile.gettempdir()) as s3:
                s3.put_files(files)
                s3.put(name.replace(os.sep, "/") + _DONE, io.BytesIO(b""))
            self.uploaded.add(name)
        except (FileNotFoundError, OSError) as exc:
            # The trainer replaced the checkpoint while it was being copied: the next one will do.
            print(f"@datastore_checkpoints: upload skipped ({exc})")

"""``@datastore_checkpoints``: training checkpoints that survive a retried attempt on another
machine, and a ``resume`` of the run (Metaflow layer, beside the flow file like
``sso_decorators.py``)."""

import os

from metaflow import user_step_decorator

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
    import shutil

    from metaflow import current
    from metaflow.metaflow_config import DATATOOLS_S3ROOT

    interval = float((attributes or {}).get("interval", 60))
    origin = current.origin_run_id
    origin = str(origin) if origin and str(origin) != str(current.run_id) else None
    ds_type = getattr(getattr(flow, "_datastore", None), "TYPE", "local")
    task, writer = _task_key()
    if ds_type == "s3" and DATATOOLS_S3ROOT:
        local, origins, scratch, uploader = _s3_dirs(step_name, origin, interval, task, writer)
    else:
        local, origins = _local_dirs(step_name, origin, task)
        scratch, uploader = [], None
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
        if ds_type == "s3" and DATATOOLS_S3ROOT:
            shutil.rmtree(local, ignore_errors=True)
        elif ok and writer:
            _remove_local_checkpoints(local)


def _task_key() -> tuple[str, bool]:
    """(the task id the checkpoints are kept under, whether this task writes them). The nodes of a
    multi-node step (``@parallel``) share the control task's: node 0 holds rank 0, the only rank
    that writes checkpoints, and every rank must resume from the same one."""
    from metaflow import current
    from sso_nodes import parallel_nodes

    nodes, index, control = parallel_nodes()
    if nodes > 1 and control:
        return str(control), index == 0
    return str(current.task_id), True


def _local_dirs(step_name: str, origin: str | None, task: str) -> tuple[str, list[str]]:
    """(this task's root, the origin run's roots) with the local datastore."""
    import tempfile

    from metaflow import current

    root = os.path.join(tempfile.gettempdir(), "sso-checkpoints", current.flow_name)
    local = os.path.join(root, str(current.run_id), step_name, task)
    os.makedirs(local, exist_ok=True)
    return local, (_task_roots(os.path.join(root, origin, step_name)) if origin else [])


def _s3_dirs(step_name: str, origin: str | None, interval: float, task: str, writer: bool):
    """(scratch root restored from S3, origin roots restored from S3, scratch dirs to delete, the
    started uploader, None when this task writes no checkpoints) with the S3 datastore."""
    import tempfile

    from metaflow import current
    from metaflow.metaflow_config import DATATOOLS_S3ROOT

    base = "/".join([DATATOOLS_S3ROOT.rstrip("/"), current.flow_name])
    local = tempfile.mkdtemp(prefix=f"sso-ckpt-{step_name}-")
    remote = f"{base}/{current.run_id}/sso-checkpoints/{step_name}/{task}/"
    restored = _restore_checkpoints(remote, local)
    print(f"@datastore_checkpoints: {remote} -> {local}" + (f" (restored {restored})" if restored else ""))
    origins, scratch = [], []
    if origin:
        origin_local = tempfile.mkdtemp(prefix=f"sso-ckpt-origin-{step_name}-")
        found = _restore_checkpoints(f"{base}/{origin}/sso-checkpoints/{step_name}/", origin_local)
        origins, scratch = _task_roots(origin_local), [origin_local]
        print(f"@datastore_checkpoints: origin run {origin}: {found or 'no checkpoints'}")
    uploader = _CheckpointUploader(remote, local, interval) if writer else None
    if uploader is not None:
        uploader.start()
    return local, origins, scratch, uploader


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

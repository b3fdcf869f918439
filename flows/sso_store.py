"""Caches in the flow's own datastore: what a step paid for once is never asked again.

``shared_store(flow, "judge")`` is a :class:`sso.cache.BlobStore` over
``<datastore root>/<FlowName>/sso-cache/<name>/<key[:2]>/<key>.json`` of the datastore the task
runs with: the local ``.metaflow`` directory, or S3 under ``--with batch`` / ``--with
kubernetes`` / Step Functions / Argo. Every attempt of a task, every ``resume`` and every run of
the flow that uses the same datastore reads and writes the same entries, whatever machine or
container it runs on; keys are content hashes (see ``sso.judge.cache`` and
``sso.data.principle_cache``), so a run with other inputs simply misses. Local metadata lists only
directories with a ``_meta`` marker as runs, so ``sso-cache`` never shows up as a run.

Writes to a local datastore are immediate and atomic (Metaflow's ``LocalStorage``). Writes to S3
are buffered and sent in batches (every ``batch`` entries or ``interval_s`` seconds, and on
``flush()``, which the caches call when their ``with`` block ends, also on an exception): a task
killed outright loses at most the last few seconds of answers.
"""

import io
import threading
import time

CACHE_DIR = "sso-cache"


def datastore_storage(flow):
    """The task's datastore storage (Metaflow's ``DataStoreStorage``: ``LocalStorage`` or
    ``S3Storage``). Metaflow has no public handle on it inside a step; this is the one place that
    reaches for the task datastore's ``_storage_impl``."""
    return flow._datastore._storage_impl


class DatastoreStore:
    """A :class:`sso.cache.BlobStore` over a prefix of the flow's datastore."""

    def __init__(self, storage, prefix: str, *, batch: int = 64, interval_s: float = 5.0):
        from sso.cache import key_path

        self._key_path = key_path
        self.storage, self.prefix = storage, prefix.rstrip("/")
        self.buffered = getattr(storage, "TYPE", "local") != "local"
        self.batch, self.interval_s = batch, interval_s
        self._pending: dict[str, bytes] = {}
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DatastoreStore({self.storage.full_uri(self.prefix)!r})"

    def path(self, key: str) -> str:
        return f"{self.prefix}/{self._key_path(key)}"

    def get_many(self, keys):
        with self._lock:
            out = {k: self._pending[k] for k in keys if k in self._pending}
        wanted = {self.path(k): k for k in keys if k not in out}
        if not wanted:
            return out
        with self.storage.load_bytes(list(wanted)) as loaded:
            for path, local_file, _meta in loaded:
                if local_file is not None:
                    with open(local_file, "rb") as fh:
                        out[wanted[path]] = fh.read()
        return out

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._pending[key] = data
            due = (not self.buffered or len(self._pending) >= self.batch
                   or time.monotonic() - self._last_flush >= self.interval_s)
            if due:
                self._write_pending()

    def flush(self) -> None:
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            items = [(self.path(k), io.BytesIO(v)) for k, v in self._pending.items()]
            self.storage.save_bytes(iter(items), overwrite=True, len_hint=len(items))
            self._pending.clear()
        self._last_flush = time.monotonic()


def shared_store(flow, name: str) -> DatastoreStore:
    """The ``name`` cache (``judge``, ``principles``) of this flow in the task's datastore."""
    from metaflow import current

    return DatastoreStore(datastore_storage(flow), f"{current.flow_name}/{CACHE_DIR}/{name}")


def stored_model(flow, files):
    """A fully fine-tuned model's files as a :class:`sso.training.stored.StoredFiles` in this
    flow's datastore (``<Flow>/sso-models/``), not a pickled artifact; LoRA adapters (kilobytes to
    megabytes) and None are returned as they are."""
    from metaflow import current

    from sso.training.policy import is_full_model
    from sso.training.stored import MODELS_DIR, StoredFiles, save_files

    if files is None or isinstance(files, StoredFiles) or not is_full_model(files):
        return files
    stored = save_files(datastore_storage(flow), f"{current.flow_name}/{MODELS_DIR}", files)
    print(f"model files stored in the datastore: {stored!r}")
    return stored

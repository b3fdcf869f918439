"""Flow tests: each runs the real flow through metaflow.Runner in a temporary datastore.

Metaflow reads its settings at import time, so the environment is fixed here, before anything
imports metaflow. Each test gets its own datastore root and working directory (cards follow cwd).
"""

import os

os.environ.setdefault("METAFLOW_USER", "ci")
os.environ["METAFLOW_DEFAULT_DATASTORE"] = "local"
os.environ["METAFLOW_DEFAULT_METADATA"] = "local"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FLOW = str(REPO / "flows" / "sso_flow.py")


@pytest.fixture
def mf_env(tmp_path, monkeypatch):
    """cwd + env for Runner: an isolated datastore, metaflow home, client cache and output dir."""
    home = tmp_path / "mfhome"
    home.mkdir()
    monkeypatch.setenv("METAFLOW_HOME", str(home))
    env = {
        "METAFLOW_HOME": str(home),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path),
        "METAFLOW_CLIENT_CACHE_PATH": str(tmp_path / "client-cache"),
        "PYTHONPATH": str(REPO),
    }
    return {"cwd": str(tmp_path), "env": env, "root": tmp_path}


def client_for(root):
    """Point the in-process Client at a test datastore."""
    from metaflow import metadata, namespace

    metadata(f"local@{root}")
    namespace(None)


def datastore_cache_entries(root, name: str) -> int:
    """Entries of the flow's ``name`` cache (judge, principles) in a test's local datastore."""
    return sum(1 for _ in (root / ".metaflow" / "SSOFlow" / "sso-cache" / name).glob("??/*.json"))


def local_judge_entries() -> int:
    """Entries of the local judge cache directory (``~/.cache/sso-flow/judge`` or $SSO_CACHE_DIR)."""
    from sso.models.tiny import default_cache_dir

    return sum(1 for _ in (default_cache_dir() / "judge").glob("??/*.json"))

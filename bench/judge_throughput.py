"""Judge throughput against the local test server with a fixed per-request latency.

For each concurrency level c the judge (``OpenAIJudge`` through ``run_judgments``, so the cache
writes are included) asks ``rounds * c`` distinct comparisons of a server that answers every request
after ``latency`` seconds. The bound is ``c / latency`` requests per second; the ratio measured /
bound says how much of the allowed concurrency the judge turns into throughput. The server runs in
its own process so that its threads do not compete with the client's for one interpreter lock.

    python bench/judge_throughput.py [--latency 0.2] [--levels 1,4,16,32] [--rounds 6]

The last line reads ``judge_vs_bound=<lowest ratio over the levels>`` (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "judge_server.py"),
                             "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("URL "):
        proc.kill()
        raise RuntimeError(f"test server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def run_level(url: str, concurrency: int, n: int, tag: str, cache_dir: str) -> float:
    from sso.config import JudgeConfig
    from sso.judge.cache import JudgeCache
    from sso.judge.protocol import build_requests, run_judgments
    from sso.judge.transport import OpenAIJudge

    jcfg = JudgeConfig(backend="openai", model="bench-judge", base_url=url,
                       api_key_env="SSO_BENCH_NO_KEY", max_concurrency=concurrency, max_retries=2,
                       timeout_s=30.0)
    pairs = [(f"{tag}-{i}", f"Instruction {tag} {i}: explain the thing.", "An answer " * 20,
              "Another answer " * 20) for i in range((n + 1) // 2)]
    requests = build_requests("win_rate", pairs)[:n]
    backend = OpenAIJudge(jcfg)
    t0 = time.perf_counter()
    rows, usage = run_judgments(requests, backend, JudgeCache(cache_dir))
    elapsed = time.perf_counter() - t0
    assert usage["requests"] == n and all(r["verdict"] == "A" for r in rows), usage
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--levels", default="1,4,16,32")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args(argv)
    os.environ.pop("SSO_BENCH_NO_KEY", None)
    levels = [int(x) for x in args.levels.split(",")]
    proc, url = start_server(args.latency)
    ratios = []
    try:
        with tempfile.TemporaryDirectory() as cache_dir:
            run_level(url, max(levels), max(levels), "warmup", cache_dir)
            print(f"{'concurrency':>11} {'requests':>8} {'req/s':>8} {'bound':>8} {'ratio':>6}")
            for c in levels:
                n = c * args.rounds
                rps = run_level(url, c, n, f"c{c}", cache_dir)
                bound = c / args.latency
                ratios.append(rps / bound)
                print(f"{c:>11} {n:>8} {rps:>8.1f} {bound:>8.1f} {rps / bound:>6.2f}", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"latency={args.latency}s per request; server in a separate process")
    print(f"judge_vs_bound={min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

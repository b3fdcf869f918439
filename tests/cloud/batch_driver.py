"""Child process of the fake-Batch test: run or resume the flow through metaflow.Runner, then read
the result with the Client, and print one JSON line.

    python batch_driver.py run CONFIG DECOSPEC [FLOW_FILE]
    python batch_driver.py resume ORIGIN_RUN_ID DECOSPEC [FLOW_FILE]

FLOW_FILE: a file of flows/ (default sso_flow.py).

It imports metaflow, so it must start with the emulated AWS's environment (Metaflow reads its
settings at import) and with the test's root directory as cwd (local metadata lives there).
"""

from __future__ import annotations

import json
import os
import sys

from metaflow import Run, Runner, namespace

FLOWS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "flows")


def describe(pathspec: str) -> dict:
    """Per step: tasks, successful, and where each task was cloned from (resume)."""
    namespace(None)
    run = Run(pathspec)
    steps = {}
    for step in run:
        steps[step.id] = [{"id": t.id, "successful": t.successful, "origin": t.origin_pathspec}
                          for t in step]
    out = {"run_id": run.id, "successful": run.successful, "steps": steps}
    if run.successful:
        data = run.data
        out["results"] = data.results.to_dict(orient="records")
        out["n_sso_pairs"] = len(data.sso_pairs)
        out["policy_adapter_files"] = {arm: sorted(files) for arm, files in data.policy_adapters.items()}
        out["judge_usage"] = run["judge"].task.data.judge_usage
        out["artifact_names"] = sorted(a.id for a in run["end"].task)
        out["generator_summaries"] = data.generator_summaries
        out["policy_summaries"] = data.policy_summaries
    return out


def main() -> None:
    mode, arg, decospec = sys.argv[1:4]
    flow = os.path.join(FLOWS, sys.argv[4] if len(sys.argv) > 4 else "sso_flow.py")
    runner = Runner(flow, show_output=True, cwd=os.getcwd(), env=dict(os.environ),
                    **({"config": [("cfg", arg)]} if mode == "run" else {}))
    with runner:
        if mode == "run":
            result = runner.run(decospecs=[decospec], max_workers=2)
        else:
            result = runner.resume(origin_run_id=arg, decospecs=[decospec], max_workers=2)
        out = {"status": result.status, "run_id": result.run.id if result.run else None}
        pathspec = result.run.pathspec if result.run else None
    if pathspec:
        out.update(describe(pathspec))
    print("RESULT " + json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()

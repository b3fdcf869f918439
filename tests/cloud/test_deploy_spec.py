"""Deployment specs for AWS Step Functions and Argo Workflows, generated offline against moto
(SSOFlow with configs/aws-batch.toml; SSOMultiNodeFlow with its training on 2 nodes x 8 GPUs).

``step-functions create --only-json`` / ``argo-workflows create --only-json`` run the real
Metaflow compilers on the real flow with ``configs/aws-batch.toml``: they register the Batch job
definitions and upload the code package to the (emulated) S3, then print the spec. The tests
check, step by step, that what a scheduler would launch is what the config asks for, that the
code package carries ``sso/`` and ``steps/``, and that the judge's API key (exported in the
launching environment, stored in the emulated secrets manager) is nowhere in it.
"""

from __future__ import annotations

import io
import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from cloudkit import API_KEY_VALUE, REPO, SECRET_ID, run_cli

pytestmark = [pytest.mark.cloud, pytest.mark.timeout(300)]

CONFIG = REPO / "configs" / "aws-batch.toml"
# Which [resources.<table>] each step takes; steps not listed take [resources.default].
STEP_TABLES = {"sample_responses": "sample", "generate_preferences": "sample",
               "generate_answers": "sample", "train_generator": "train", "train_policy": "train",
               "judge": "judge", "compare": "judge"}
GPU_STEPS = {"sample_responses", "generate_preferences", "generate_answers", "train_generator",
             "train_policy"}
ALL_STEPS = GPU_STEPS | {"start", "load_queries", "generate_principles", "join_samples",
                         "join_preferences", "fan_out_arms", "judge", "compare", "end"}


def _resources(step: str) -> dict:
    """The config table a step should follow, with the defaults of sso.config filled in."""
    from sso.config import load_config

    cfg = load_config(str(CONFIG)).to_dict()
    return cfg["resources"][STEP_TABLES.get(step, "default")]


def _boto(service, endpoint):
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _batch_states(states: dict, out: dict) -> dict:
    """All Batch-job states of an Amazon States Language document, by step name."""
    for name, state in states.items():
        params = state.get("Parameters", {})
        if state.get("Type") == "Task" and "JobQueue" in params:
            out[params["Parameters"]["step_name"]] = params
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                _batch_states(state[key]["States"], out)
        for branch in state.get("Branches", []):
            _batch_states(branch["States"], out)
    return out


def _code_package(endpoint: str, url: str) -> dict[str, bytes]:
    """The code package a remote task downloads (from the emulated S3): file name -> content."""
    bucket, key = url[len("s3://"):].split("/", 1)
    body = _boto("s3", endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _assert_code_package(files: dict[str, bytes]) -> None:
    names = list(files)
    for required in ("sso_flow.py", "sso_decorators.py", "sso_checkpoints.py", "sso_store.py",
                     "sso/__init__.py", "sso/config.py", "sso/cache.py",
                     "sso/data/queries.jsonl", "steps/__init__.py", "steps/judge.py",
                     "steps/train_policy.py"):
        assert required in names, f"{required} missing from the code package: {sorted(names)[:40]}"


@pytest.fixture
def sfn(fake_aws, cloud_env):
    """(state machine JSON text, its Batch states by step, job definitions by ARN)."""
    proc = run_cli(["--config", "cfg", str(CONFIG), "step-functions", "create", "--only-json"],
                   env=cloud_env["env"], cwd=cloud_env["root"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout[proc.stdout.index("{"):]
    states = _batch_states(json.loads(text)["States"], {})
    jobdefs = {jd["jobDefinitionArn"]: jd for jd in
               _boto("batch", fake_aws["endpoint"]).describe_job_definitions()["jobDefinitions"]}
    return text, states, jobdefs


def test_step_functions_spec_follows_the_config(sfn):
    _text, states, jobdefs = sfn
    assert set(states) >= ALL_STEPS
    for step, params in states.items():
        res = _resources(step)
        reqs = {r["Type"]: r["Value"] for r in params["ContainerOverrides"]["ResourceRequirements"]}
        container = jobdefs[params["JobDefinition"]]["containerProperties"]
        where = f"step {step} ([resources.{STEP_TABLES.get(step, 'default')}])"
        assert reqs["VCPU"] == str(res["cpu"]), where
        assert reqs["MEMORY"] == str(res["memory"]), where
        if step in GPU_STEPS:
            assert res["gpu"] >= 1 and reqs.get("GPU") == str(res["gpu"]), where
        else:
            assert "GPU" not in reqs, f"{where} requests a GPU: {reqs}"
        assert container["image"] == res["image"], where
        assert params["JobQueue"] == res["queue"], where
        assert params["Timeout"]["AttemptDurationSeconds"] == 60 * res["timeout_minutes"], where
        shm = (container.get("linuxParameters") or {}).get("sharedMemorySize")
        assert shm == (res["shared_memory"] or None), where
    # @retry on the idempotent GPU steps and the judge becomes Batch's own retry strategy.
    assert states["sample_responses"]["RetryStrategy"]["Attempts"] >= 2
    assert states["judge"]["RetryStrategy"]["Attempts"] >= 2


def test_step_functions_code_package_and_no_secret(fake_aws, sfn):
    text, states, jobdefs = sfn
    env = {e["Name"]: e.get("Value") for e in states["judge"]["ContainerOverrides"]["Environment"]}
    files = _code_package(fake_aws["endpoint"], env["METAFLOW_CODE_URL"])
    _assert_code_package(files)
    # The judge fetches the key at run time from the secrets manager: only the secret's *name*
    # is deployed (in the config frozen into the code package), never its value.
    assert SECRET_ID.encode() in files[".mf_meta/CONFIG"]
    assert not [name for name, data in files.items() if API_KEY_VALUE.encode() in data]
    assert API_KEY_VALUE not in text
    assert API_KEY_VALUE not in json.dumps(list(jobdefs.values()), default=str)


def test_argo_workflows_spec_follows_the_config(fake_aws, cloud_env):
    pytest.importorskip("kubernetes", reason="argo-workflows create needs the kubernetes package")
    proc = run_cli(["--config", "cfg", str(CONFIG), "argo-workflows", "create", "--only-json"],
                   env=cloud_env["env"], cwd=cloud_env["root"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout[proc.stdout.index("{"):]
    assert API_KEY_VALUE not in text
    spec = json.loads(text)
    templates = {t["name"].replace("-", "_"): t for t in spec["spec"]["templates"]
                 if t.get("container") and t["name"].replace("-", "_") in ALL_STEPS}
    assert set(templates) >= ALL_STEPS
    for step, tpl in templates.items():
        res, container = _resources(step), tpl["container"]
        where = f"step {step}"
        assert container["image"] == res["image"], where
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(res["gpu"]), where
        assert (step in GPU_STEPS) == (res["gpu"] > 0), where
        assert float(container["resources"]["requests"]["memory"].rstrip("M")) == res["memory"], where
        assert float(container["resources"]["requests"]["cpu"]) == res["cpu"], where
        assert tpl["activeDeadlineSeconds"] == 60 * res["timeout_minutes"], where
        shm = [v for v in tpl.get("volumes", []) if v["name"] == "dhsm"]
        if res["shared_memory"]:
            assert shm[0]["emptyDir"]["sizeLimit"] == f"{res['shared_memory']}Mi", where
    env = {e["name"]: e.get("value") for e in templates["judge"]["container"]["env"]}
    assert API_KEY_VALUE not in json.dumps(env)
    _assert_code_package(_code_package(fake_aws["endpoint"], env["METAFLOW_CODE_URL"]))


def test_config_tables_are_what_the_test_expects():
    """Guard: the aws-batch config really is the GPU/CPU split these tests claim to check."""
    raw = tomllib.loads(Path(CONFIG).read_text())
    assert raw["judge"]["secrets"] and "sk-" not in json.dumps(raw)
    for table in ("sample", "train"):
        assert raw["resources"][table]["gpu"] >= 1 and raw["resources"][table]["memory"] >= 32000
    assert raw["resources"]["judge"]["gpu"] == 0


def test_environment_decorator_would_leak_the_key(fake_aws, cloud_env):
    """Negative control: the check above does catch a key passed the wrong way (@environment)."""
    spec = json.dumps({"vars": {"OPENAI_API_KEY": API_KEY_VALUE}})
    proc = run_cli(["--config", "cfg", str(CONFIG), "--with", f"environment:vars={spec}",
                    "step-functions", "create", "--only-json"],
                   env=cloud_env["env"], cwd=cloud_env["root"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert API_KEY_VALUE in proc.stdout


MULTINODE_FLOW = str(REPO / "flows" / "sso_multinode_flow.py")


def _multinode_config(tmp_path: Path, nodes: int, gpu: int) -> Path:
    """configs/aws-batch.toml with [resources.train] on ``nodes`` nodes of ``gpu`` GPUs."""
    text = CONFIG.read_text()
    head = text.index("[resources.train]")
    body = text.index("gpu = 1", head)
    path = tmp_path / "multinode.toml"
    path.write_text(text[:body] + f"gpu = {gpu}\nnodes = {nodes}" + text[body + len("gpu = 1"):])
    return path


def test_argo_workflows_spec_runs_each_training_step_as_a_multi_node_jobset(fake_aws, cloud_env, tmp_path):
    """SSOMultiNodeFlow with 2 nodes x 8 GPUs: each training step is a JobSet (a control job, node 0,
    and nodes - 1 workers, the count coming from the parent step's num_parallel output, which is
    ``[resources.train] nodes`` of the config frozen into the code package), 8 GPUs and the
    config's image on every node."""
    import re

    pytest.importorskip("kubernetes", reason="argo-workflows create needs the kubernetes package")
    cfg = _multinode_config(tmp_path, nodes=2, gpu=8)
    proc = run_cli(["--config", "cfg", str(cfg), "argo-workflows", "create", "--only-json"],
                   env=cloud_env["env"], cwd=cloud_env["root"], timeout=240, flow=MULTINODE_FLOW)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = json.loads(proc.stdout[proc.stdout.index("{"):])
    templates = {t["name"]: t for t in spec["spec"]["templates"]}
    tasks = {t["name"]: t for tpl in spec["spec"]["templates"] if "dag" in tpl for t in tpl["dag"]["tasks"]}
    res = _resources("train")
    for step, parent in (("train-generator-nodes", "train-generator"), ("train-policy-nodes", "train-policy")):
        manifest = templates[step]["resource"]["manifest"]
        assert "kind: JobSet" in manifest, step
        jobs = re.findall(r"- name: (control|worker)\n\s+replicas: (\S+)", manifest)
        assert jobs == [("control", "1"), ("worker", "{{=asInt(inputs.parameters.workerCount)}}")], (step, jobs)
        args = {a["name"]: a["value"] for a in tasks[step]["arguments"]["parameters"]}
        assert "sub(sprig.int(inputs.parameters['num-parallel']),1)" in args["workerCount"], step
        outputs = {o["name"] for o in templates[parent]["outputs"]["parameters"]}
        assert "num-parallel" in outputs, parent
        assert re.findall(r"nvidia.com/gpu: '(\d+)'", manifest) == ["8", "8"], step   # control, worker
        assert set(re.findall(r"image: (\S+)", manifest)) == {res["image"]}, step
        assert f"step {step.replace('-', '_')}" in manifest, step
    env = {e["name"]: e.get("value") for e in templates["judge"]["container"]["env"]}
    files = _code_package(fake_aws["endpoint"], env["METAFLOW_CODE_URL"])
    assert "sso_multinode_flow.py" in files and "sso_nodes.py" in files
    frozen = json.loads(files[".mf_meta/CONFIG"])
    train = next(v for v in _find_tables(frozen) if v.get("nodes") == 2 and v.get("gpu") == 8)
    assert train["image"] == res["image"]


def _find_tables(obj):
    """Every dict nested in a JSON value (the frozen config's layout is Metaflow's)."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _find_tables(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _find_tables(v)
    elif isinstance(obj, str) and obj.startswith("{"):
        try:
            yield from _find_tables(json.loads(obj))
        except ValueError:
            return


def test_step_functions_refuses_the_multi_node_flow(cloud_env, tmp_path):
    cfg = _multinode_config(tmp_path, nodes=2, gpu=8)
    proc = run_cli(["--config", "cfg", str(cfg), "step-functions", "create", "--only-json"],
                   env=cloud_env["env"], cwd=cloud_env["root"], timeout=240, flow=MULTINODE_FLOW)
    assert proc.returncode != 0 and "@parallel" in proc.stdout + proc.stderr

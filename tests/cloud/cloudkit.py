"""Helpers of the cloud tests: the flow against a local AWS emulation (moto on 127.0.0.1).

No account, no network. The emulated AWS (``fake_batch_server.py``) runs in its own process on a free port, is set up with
the bucket, IAM role, Batch compute environment and job queues, Step Functions' DynamoDB table and
the judge's secret, and is always terminated. Metaflow runs in child processes (Runner, CLI)
with the environment from ``cloud_env``; nothing in this process imports metaflow, because
metaflow reads its configuration once at import and an S3 client pointed at the wrong endpoint
hangs in retries. Every child process and every test has a hard timeout.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLOW = str(REPO / "flows" / "sso_flow.py")
BUCKET = "sso-flow-test"
REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/sso-batch"
QUEUES = ("sso-gpu", "sso-cpu", "default-queue")
SECRET_ID = "sso-flow/judge"
# The value stored in the fake secrets manager (and exported in the launching environment):
# tests assert that it never appears in a deployment spec, a job definition or a job's environment.
API_KEY_VALUE = "sk-test-DO-NOT-LEAK-8f3a9c2e71"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": endpoint,
    }


def setup_aws(endpoint: str) -> None:
    import boto3

    kw = {"endpoint_url": endpoint, "region_name": REGION,
          "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    boto3.client("s3", **kw).create_bucket(Bucket=BUCKET)
    iam = boto3.client("iam", **kw)
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": ["batch.amazonaws.com", "ecs-tasks.amazonaws.com",
                                                      "states.amazonaws.com", "events.amazonaws.com"]},
         "Action": "sts:AssumeRole"}]})
    role_arn = iam.create_role(RoleName="sso-batch", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    iam.create_instance_profile(InstanceProfileName="sso-batch")
    iam.add_role_to_instance_profile(InstanceProfileName="sso-batch", RoleName="sso-batch")
    ec2 = boto3.client("ec2", **kw)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="sso-batch", Description="sso", VpcId=vpc)["GroupId"]
    batch = boto3.client("batch", **kw)
    ce = batch.create_compute_environment(
        computeEnvironmentName="sso-ce", type="MANAGED", state="ENABLED", serviceRole=role_arn,
        computeResources={"type": "EC2", "minvCpus": 0, "maxvCpus": 64, "desiredvCpus": 0,
                          "instanceTypes": ["optimal"], "subnets": [subnet], "securityGroupIds": [sg],
                          "instanceRole": "sso-batch"})["computeEnvironmentArn"]
    for q in QUEUES:
        batch.create_job_queue(jobQueueName=q, state="ENABLED", priority=1,
                               computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}])
    boto3.client("dynamodb", **kw).create_table(
        TableName="sso-sfn", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pathspec", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pathspec", "KeyType": "HASH"}])
    boto3.client("secretsmanager", **kw).create_secret(
        Name=SECRET_ID, SecretString=json.dumps({"OPENAI_API_KEY": API_KEY_VALUE}))


def run_cli(args, env, cwd, timeout, flow: str = FLOW):
    """Run ``python flows/sso_flow.py ARGS`` (or another flow file) in a child process under a
    hard timeout."""
    return subprocess.run([sys.executable, flow, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def read_jobs(fake_aws) -> list[dict]:
    path = Path(fake_aws["workdir"]) / "jobs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

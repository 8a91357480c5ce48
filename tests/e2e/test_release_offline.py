"""The release path (infra/release.py) run as `make deploy/rollback/destroy` run it, against the local
emulator (moto server over HTTP): the stack, its ECR repository, bucket, table, ECS cluster and
service, and GPU group are real emulator resources. docker and sam are stand-ins at the script's
seam: docker's push puts the image into the emulator's ECR, sam's deploy creates or updates the
stack as SAM does (the given overrides, UsePreviousValue for every other parameter)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from twopass.config import REPO_ROOT

pytestmark = pytest.mark.e2e

REGION = "us-east-1"
STACK = "twopass-dev"  # samconfig.toml's [dev]

#: A stand-in for template.yaml with what the release path touches, under the same logical ids and
#: outputs (moto's CloudFormation cannot create the real template's API, Lambda or capacity provider).
STAND_IN = {
    "Parameters": {
        "ImageTag": {"Type": "String", "Default": "0.1.0"},
        "AlarmEmail": {"Type": "String", "Default": ""},
        "ConfigureApiGatewayAccount": {"Type": "String", "Default": "true"},
        "WorkerMaxTasks": {"Type": "String", "Default": "4"},
    },
    "Resources": {
        "WorkerRepository": {
            "Type": "AWS::ECR::Repository",
            "DeletionPolicy": "Retain",
            "Properties": {"RepositoryName": "twopass-dev-worker"},
        },
        "PayloadBucket": {"Type": "AWS::S3::Bucket"},
        "JobsTable": {
            "Type": "AWS::DynamoDB::Table",
            "DeletionPolicy": "Retain",
            "Properties": {
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": "job_id", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
            },
        },
        "WorkerCluster": {"Type": "AWS::ECS::Cluster", "Properties": {"ClusterName": "twopass-dev-workers"}},
        "WorkerTaskDefinition": {
            "Type": "AWS::ECS::TaskDefinition",
            "Properties": {
                "Family": "twopass-dev-worker",
                "ContainerDefinitions": [
                    {
                        "Name": "worker",
                        "Image": {"Fn::Sub": "${WorkerRepository.RepositoryUri}:${ImageTag}"},
                        "Memory": 512,
                    }
                ],
            },
        },
        "WorkerService": {
            "Type": "AWS::ECS::Service",
            "Properties": {
                "Cluster": {"Ref": "WorkerCluster"},
                "TaskDefinition": {"Ref": "WorkerTaskDefinition"},
                "DesiredCount": 0,
                "ServiceName": "twopass-dev-worker",
            },
        },
        "WorkerLaunchTemplate": {
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {"LaunchTemplateData": {"ImageId": "ami-12c6146b", "InstanceType": "g4dn.xlarge"}},
        },
        # One GPU instance still running when the stack is deleted.
        "WorkerAutoScalingGroup": {
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            "Properties": {
                "MinSize": "0",
                "MaxSize": {"Ref": "WorkerMaxTasks"},
                "DesiredCapacity": "1",
                "AvailabilityZones": ["us-east-1a"],
                "LaunchTemplate": {
                    "LaunchTemplateId": {"Ref": "WorkerLaunchTemplate"},
                    "Version": {"Fn::GetAtt": ["WorkerLaunchTemplate", "LatestVersionNumber"]},
                },
            },
        },
    },
    "Outputs": {
        "EcrRepositoryUri": {"Value": {"Fn::GetAtt": ["WorkerRepository", "RepositoryUri"]}},
        "PayloadBucketName": {"Value": {"Ref": "PayloadBucket"}},
        "TableName": {"Value": {"Ref": "JobsTable"}},
        "ClusterName": {"Value": {"Ref": "WorkerCluster"}},
        "ServiceName": {"Value": {"Fn::GetAtt": ["WorkerService", "Name"]}},
    },
}

#: `sam build` does nothing; `sam deploy` creates or updates the stand-in as SAM would.
FAKE_SAM = """
import json, os, sys, boto3
args = sys.argv[1:]
log = open(os.environ["FAKE_LOG"], "a"); log.write(json.dumps(["sam", *args]) + "\\n"); log.close()
if args[0] == "build":
    sys.exit(0)
given = dict(a.split("=", 1) for a in args[args.index("--parameter-overrides") + 1 :] if "=" in a)
template = json.load(open(os.environ["FAKE_TEMPLATE"]))
cfn = boto3.client("cloudformation", region_name="us-east-1")
names = template["Parameters"]
try:
    cfn.describe_stacks(StackName="twopass-dev")
except Exception:
    params = [{"ParameterKey": k, "ParameterValue": given.get(k, v["Default"])} for k, v in names.items()]
    cfn.create_stack(StackName="twopass-dev", TemplateBody=json.dumps(template), Parameters=params)
    sys.exit(0)
params = [{"ParameterKey": k, "ParameterValue": given[k]} if k in given else {"ParameterKey": k, "UsePreviousValue": True} for k in names]
try:
    cfn.update_stack(StackName="twopass-dev", UsePreviousTemplate=True, Parameters=params)
except Exception as exc:  # fail_on_empty_changeset = false
    if "No updates" not in str(exc):
        raise
"""

#: `docker login` reads the password; `docker buildx build ... -t URI:TAG --push` puts an image in ECR.
FAKE_DOCKER = """
import json, os, sys, boto3
args = sys.argv[1:]
log = open(os.environ["FAKE_LOG"], "a"); log.write(json.dumps(["docker", *args]) + "\\n"); log.close()
if args[0] == "login":
    assert sys.stdin.read(), "no password on stdin"
    sys.exit(0)
uri, tag = args[args.index("-t") + 1].rsplit(":", 1)
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"digest": "sha256:" + "0" * 64, "size": 1, "mediaType": "application/vnd.docker.container.image.v1+json"},
            "layers": []}
boto3.client("ecr", region_name="us-east-1").put_image(
    repositoryName=uri.split("/", 1)[1], imageManifest=json.dumps(manifest), imageTag=tag)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A moto server on loopback, and the environment that points boto3 (and the stand-ins) at it."""
    port = _free_port()
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "FAKE_LOG": str(tmp_path / "commands.jsonl"),
        "FAKE_TEMPLATE": str(tmp_path / "stand-in.json"),
    }
    env.pop("AWS_PROFILE", None)
    (tmp_path / "stand-in.json").write_text(json.dumps(STAND_IN))
    server = subprocess.Popen(
        [sys.executable, "-m", "twopass.local.emulator", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.1)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)


def _client(env: dict[str, str], service: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=env["AWS_ENDPOINT_URL"])  # type: ignore[call-overload]


def _release(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    fakes = {}
    for name, source in (("sam", FAKE_SAM), ("docker", FAKE_DOCKER)):
        path = tmp_path / f"fake_{name}"
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(source))
        path.chmod(0o755)
        fakes[name] = str(path)
    argv = [sys.executable, "-m", "infra.release", *args, "--sam", fakes["sam"], "--docker", fakes["docker"]]
    argv += ["--timeout", "30", "--poll-seconds", "0.1"]
    return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def _stack_parameters(env: dict[str, str]) -> dict[str, str]:
    (stack,) = _client(env, "cloudformation").describe_stacks(StackName=STACK)["Stacks"]
    return {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}


def _commands(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "commands.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _gpu_instance_for_the_preflight(env: dict[str, str]) -> None:
    """Register one container instance, as the capacity provider's first instance would."""
    (instance,) = _client(env, "ec2").run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"]
    document = {
        "instanceId": instance["InstanceId"],
        "availabilityZone": "us-east-1a",
        "region": REGION,
        "instanceType": "g4dn.xlarge",
        "imageId": "ami-12c6146b",
        "privateIp": "10.42.0.10",
        "accountId": "123456789012",
    }
    _client(env, "ecs").register_container_instance(
        cluster="twopass-dev-workers", instanceIdentityDocument=json.dumps(document)
    )


def _finish_preflight_tasks(env: dict[str, str], stop: threading.Event, seen: list[str]) -> None:
    """The emulator runs no container: end each preflight task as a container exiting 0 would."""
    ecs = _client(env, "ecs")
    while not stop.is_set():
        try:
            arns = ecs.list_tasks(cluster="twopass-dev-workers", startedBy="twopass-release")["taskArns"]
        except Exception:  # the cluster does not exist yet
            arns = []
        for arn in set(arns) - set(seen):
            (task,) = ecs.describe_tasks(cluster="twopass-dev-workers", tasks=[arn])["tasks"]
            seen.append(json.dumps(task["overrides"]["containerOverrides"]))
            ecs.stop_task(cluster="twopass-dev-workers", task=arn, reason="Essential container exited")
            seen[-1] = arn
        time.sleep(0.1)


def test_first_deploy_release_rollback_and_delete(emulator: dict[str, str], tmp_path: Path) -> None:
    env = emulator
    # A first deploy must say where alarms go.
    refused = _release(env, tmp_path, "deploy", "--env", "dev", "--tag", "aaa111", "--yes")
    assert refused.returncode == 1
    assert "ALARM_EMAIL=you@example.com" in refused.stderr
    assert _commands(tmp_path) == []

    # The dry run prints the commands it would run, the env's own overrides beside the tag.
    dry = _release(env, tmp_path, "deploy", "--env", "dev", "--tag", "aaa111", "--alarm-email", "none", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "sam deploy --config-env dev --parameter-overrides" in dry.stdout
    assert "WorkerMaxTasks=2" in dry.stdout and "ImageTag=aaa111" in dry.stdout
    assert _commands(tmp_path) == []

    # First deploy: the stack, then the image into its new repository, then the preflight on a GPU.
    stop, seen = threading.Event(), []
    finisher = threading.Thread(target=_finish_preflight_tasks, args=(env, stop, seen), daemon=True)
    finisher.start()
    try:
        first = _release(
            env,
            tmp_path,
            "deploy",
            "--env",
            "dev",
            "--tag",
            "aaa111",
            "--alarm-email",
            "ops@example.com",
            "--skip-preflight",
            "--yes",
        )
        assert first.returncode == 0, first.stderr
        assert "creating twopass-dev" in first.stdout
        assert "preflight skipped" in first.stdout
        _gpu_instance_for_the_preflight(env)
        second = _release(env, tmp_path, "deploy", "--env", "dev", "--tag", "bbb222", "--yes")
    finally:
        stop.set()
        finisher.join(timeout=5)
    assert second.returncode == 0, second.stderr
    assert "updating twopass-dev" in second.stdout
    assert "preflight passed" in second.stdout
    assert len(seen) == 1
    ecs = _client(env, "ecs")
    (task,) = ecs.describe_tasks(cluster="twopass-dev-workers", tasks=seen)["tasks"]
    assert task["overrides"]["containerOverrides"] == [
        {"name": "worker", "command": ["python", "-m", "twopass.worker", "--preflight"]}
    ]
    assert task["taskDefinitionArn"].split("/")[-1].startswith("twopass-dev-worker")
    params = _stack_parameters(env)
    assert params["ImageTag"] == "bbb222"
    assert params["AlarmEmail"] == "ops@example.com"  # kept: the second deploy did not pass it
    assert params["ConfigureApiGatewayAccount"] == "true"  # no other stack owns the account's role
    images = _client(env, "ecr").list_images(repositoryName="twopass-dev-worker")["imageIds"]
    assert {i["imageTag"] for i in images} == {"aaa111", "bbb222"}
    deploys = [c for c in _commands(tmp_path) if c[:2] == ["sam", "deploy"]]
    assert len(deploys) == 2 and "WorkerMaxTasks=2" in deploys[1] and "ImageTag=bbb222" in deploys[1]
    # The same tag again is not rebuilt (ECR tags are immutable).
    again = _release(env, tmp_path, "deploy", "--env", "dev", "--tag", "bbb222", "--skip-preflight", "--yes")
    assert again.returncode == 0, again.stderr
    assert "already in ECR: not rebuilt" in again.stdout

    # Rollback: only to a tag in ECR; the previous template, only ImageTag changed.
    missing = _release(env, tmp_path, "rollback", "--env", "dev", "--tag", "zzz999")
    assert missing.returncode == 1
    assert "not in the stack's ECR repository" in missing.stderr
    back = _release(env, tmp_path, "rollback", "--env", "dev", "--tag", "aaa111")
    assert back.returncode == 0, back.stderr
    assert "from image bbb222 to aaa111" in back.stdout
    params = _stack_parameters(env)
    assert params["ImageTag"] == "aaa111" and params["AlarmEmail"] == "ops@example.com"

    # Delete: a GPU instance still up and claim-check images in the bucket do not stop it.
    (stack,) = _client(env, "cloudformation").describe_stacks(StackName=STACK)["Stacks"]
    out = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    s3 = _client(env, "s3")
    for n in range(3):
        s3.put_object(Bucket=out["PayloadBucketName"], Key=f"payloads/job-{n}", Body=b"jpeg")
    asg = _client(env, "autoscaling")
    assert asg.describe_auto_scaling_groups()["AutoScalingGroups"][0]["Instances"]
    gone = _release(env, tmp_path, "destroy", "--env", "dev", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert "3 object(s) deleted" in gone.stdout
    assert "no instance left" in gone.stdout
    assert f"table {out['TableName']} (DeletionPolicy Retain, point-in-time recovery on)" in gone.stdout
    assert "$0.00/month" in gone.stdout
    assert "aws ecr delete-repository --repository-name twopass-dev-worker --force" in gone.stdout
    assert all(not g["Instances"] for g in asg.describe_auto_scaling_groups()["AutoScalingGroups"])
    stacks = _client(env, "cloudformation").list_stacks()["StackSummaries"]
    assert {s["StackStatus"] for s in stacks if s["StackName"] == STACK} == {"DELETE_COMPLETE"}
    assert _client(env, "dynamodb").describe_table(TableName=out["TableName"])["Table"]["TableName"]
    # Nothing left to delete the second time.
    twice = _release(env, tmp_path, "destroy", "--env", "dev", "--yes")
    assert twice.returncode == 0 and "nothing to delete" in twice.stdout

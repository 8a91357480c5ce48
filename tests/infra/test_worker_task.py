"""The worker's ECS task definition against the stack the template creates (moto, in process):
its environment resolves to the created queue, table and bucket, and the real worker, wired from
that environment, calls AWS only within its task role."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest

from twopass.config import REPO_ROOT, Settings
from twopass.local import template as tpl

REGION = "us-east-1"
TASK = "WorkerTaskDefinition"
CAT = REPO_ROOT / "layers" / "twopass" / "twopass" / "data" / "cat.jpg"


@cache
def _cfn() -> dict[str, Any]:
    return tpl.transform(tpl.load(), region=REGION)


@dataclass
class Stack:
    outputs: dict[str, str]
    resources: dict[str, str]
    worker_env: dict[str, str] = field(default_factory=dict)

    def lookup(self, logical_id: str, attribute: str | None) -> str:
        if logical_id not in self.resources and attribute == "Name":
            # moto names the event bus but gives it no physical id: its name is an output.
            return self.outputs[f"{logical_id}Name"]
        physical = self.resources[logical_id]
        if attribute is None:
            return physical
        if attribute == "Arn" and physical.startswith("http"):
            attrs = boto3.client("sqs", region_name=REGION).get_queue_attributes(
                QueueUrl=physical, AttributeNames=["QueueArn"]
            )
            return str(attrs["Attributes"]["QueueArn"])
        if attribute == "QueueName":
            return physical.rsplit("/", 1)[-1]
        raise KeyError(f"GetAtt {logical_id}.{attribute}")


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The template's data plane created by CloudFormation in moto, and the worker env resolved."""
    from moto import mock_aws

    from twopass import aws

    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    aws.reset_clients()
    with mock_aws():
        cloudformation = boto3.client("cloudformation", region_name=REGION)
        cloudformation.create_stack(StackName="twopass-infra-test", TemplateBody=json.dumps(tpl.data_plane(_cfn())))
        described = cloudformation.describe_stacks(StackName="twopass-infra-test")["Stacks"][0]
        assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
        created = Stack(
            outputs={o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]},
            resources={
                r["LogicalResourceId"]: r["PhysicalResourceId"]
                for r in cloudformation.describe_stack_resources(StackName="twopass-infra-test")["StackResources"]
                if "PhysicalResourceId" in r
            },
        )
        params = tpl.parameter_defaults(_cfn(), {"AWS::Region": REGION})
        resolved = tpl.resolve(tpl.container_environment(_cfn(), TASK), created.lookup, params, _cfn()["Conditions"])
        created.worker_env = {k: str(v) for k, v in resolved.items()}
        yield created
    aws.reset_clients()


def test_worker_env_resolves_to_the_created_stack(stack: Stack) -> None:
    env = stack.worker_env
    assert env["TWOPASS_QUEUE_URL"] == stack.outputs["QueueUrl"]
    assert env["TWOPASS_TABLE_NAME"] == stack.outputs["TableName"]
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == REGION
    assert not any(v.startswith("{") for v in env.values()), env  # every intrinsic resolved

    settings = Settings.from_env(env)
    settings.require("queue_url", "table_name")
    defaults = tpl.parameter_defaults(_cfn())
    assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.max_batch_size == int(defaults["WorkerMaxBatchSize"])
    assert settings.max_wait_ms == int(defaults["WorkerMaxWaitMs"])
    assert settings.visibility_timeout_seconds == int(defaults["QueueVisibilityTimeout"])
    assert settings.job_ttl_days == float(defaults["JobRetentionDays"])
    # The model path the task sets is where the image puts the model, and the model exists.
    assert settings.slow_model == "/opt/models/efficientnet-lite2-fp32.onnx"
    assert (REPO_ROOT / "layers" / "models" / "slow" / Path(settings.slow_model).name).is_file()

    from twopass.queue.sqs import SqsSource

    # The worker reads maxReceiveCount from the queue the template created (GetQueueAttributes).
    assert SqsSource(settings.queue_url).max_receive_count == int(defaults["MaxReceiveCount"])


# ---------------------------------------------------------------- what the worker calls vs its role

#: API operations whose IAM action is not "<service>:<operation>".
OPERATION_ACTIONS = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "s3:HeadObject": "s3:GetObject",
}
#: Granted but not seen in a run: S3 answers 404 rather than 403 for a missing key only with it.
GRANTED_NOT_CALLED = {"s3:ListBucket"}
#: Methods of the source, the store and the payload store this test drives; the worker may call no other.
EXERCISED = {
    "source": {"receive", "receive_lane", "lanes", "ack", "release", "extend", "last_attempt"},
    # message_held and when_announced make no AWS call (they order the ack after the event's
    # delivery); reannounce makes the same PutEvents call as a final write.
    "store": {
        "start",
        "succeed",
        "fail",
        "expire",
        "get",
        "keep_image",
        "beat",
        "forget_worker",
        "message_held",
        "when_announced",
        "reannounce",
    },
    "payloads": {"image", "delete", "put"},
}


def _task_role_actions() -> set[str]:
    role = _cfn()["Resources"]["WorkerTaskRole"]["Properties"]
    actions: set[str] = set()
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions.update([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    return actions


class Recorder:
    """Records the IAM action of every AWS call made through twopass.aws while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.actions: set[str] = set()
        self._lock = threading.Lock()

    def hook(self, model: Any, **_: Any) -> None:
        if self.on:
            op = f"{model.service_model.signing_name}:{model.name}"
            with self._lock:
                self.actions.add(OPERATION_ACTIONS.get(op, op))


def test_worker_uses_only_the_exercised_calls() -> None:
    """When the worker starts calling something new, extend the run below (and maybe the role)."""
    package = REPO_ROOT / "layers" / "twopass" / "twopass" / "worker"
    source = "\n".join(path.read_text() for path in sorted(package.glob("*.py")))
    calls = {owner: set(re.findall(rf"\b{owner}\.(\w+)\(", source)) for owner in EXERCISED}
    assert calls["source"] and calls["store"] and calls["payloads"], "the scan no longer sees the worker's calls"
    for owner, seen in calls.items():
        assert seen <= EXERCISED[owner], owner


@pytest.mark.timeout(120)
def test_worker_calls_only_what_its_task_role_allows(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from twopass import aws, payloads
    from twopass.jobs.base import JobRecord, JobStatus, new_job_id
    from twopass.jobs.dynamodb import DynamoJobStore
    from twopass.queue.base import JobMessage
    from twopass.queue.sqs import SqsPublisher
    from twopass.worker.main import build_worker

    recorder = Recorder()
    make_client = aws._client.__wrapped__  # the uncached factory

    @cache
    def hooked(service: str, endpoint: str | None, region: str | None, *rest: Any) -> Any:
        c = make_client(service, endpoint, region, *rest)
        c.meta.events.register("before-call.*.*", recorder.hook)
        return c

    monkeypatch.setattr(aws, "_client", hooked)

    # The task's env, with the model from the checkout on CPU, and short polls for a quick test.
    env = dict(stack.worker_env)
    env.update(
        TWOPASS_SLOW_MODEL=str(REPO_ROOT / "layers" / "models" / "slow" / Path(env["TWOPASS_SLOW_MODEL"]).name),
        TWOPASS_PROVIDERS="cpu",
        TWOPASS_POLL_WAIT_SECONDS="1",
        TWOPASS_HEARTBEAT_SECONDS="0.2",
        TWOPASS_RECEIVERS="1",
    )
    settings = Settings.from_env(env)
    bucket = stack.outputs["PayloadBucketName"]
    image = CAT.read_bytes()

    # What the API does (not recorded): records, one inline job, one claim check, one lost payload,
    # one high-priority job, one whose message an outage lost (the reconciler republishes it), one
    # cancelled before a worker saw it and one past its deadline (both keep their inline image).
    store = DynamoJobStore(settings.table_name, ttl_seconds=settings.job_ttl_seconds)
    publisher = SqsPublisher(settings.queue_url)
    inline, claimed, lost, urgent, orphan = (new_job_id() for _ in range(5))
    for job_id in (inline, claimed, lost, urgent):
        store.create(JobRecord(job_id=job_id))
    publisher.publish(JobMessage(job_id=inline, image=image))
    claimed_ref = payloads.put(bucket, claimed, image)
    publisher.publish(JobMessage(job_id=claimed, image_ref=claimed_ref))
    publisher.publish(JobMessage(job_id=lost, image_ref=f"s3://{bucket}/{payloads.PREFIX}{lost}"))
    SqsPublisher(settings.high_priority_queue_url).publish(JobMessage(job_id=urgent, image=image, priority="high"))
    store.create(JobRecord(job_id=orphan, image_ref=payloads.put(bucket, orphan, image), created_at=time.time() - 60))
    cancelled, late = new_job_id(), new_job_id()
    store.create(JobRecord(job_id=cancelled))
    assert store.cancel(cancelled)
    publisher.publish(JobMessage(job_id=cancelled, image=image))
    store.create(JobRecord(job_id=late, deadline_at=time.time() - 1))
    publisher.publish(JobMessage(job_id=late, image=image, deadline_at=time.time() - 1))

    recorder.on = True
    worker = build_worker(settings)
    thread = threading.Thread(target=worker.run, name="worker-under-test", daemon=True)
    thread.start()
    table = boto3.client("dynamodb", region_name=REGION)  # the test's own reads: not recorded
    deadline = time.monotonic() + 60
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        for job_id in (inline, claimed, lost, urgent):
            item = table.get_item(TableName=settings.table_name, Key={"job_id": {"S": job_id}})["Item"]
            statuses[job_id] = item["status"]["S"]
        seen = worker.stats.cancelled + worker.stats.discarded + worker.stats.expired
        if seen == 2 and all(s in (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value) for s in statuses.values()):
            break
        time.sleep(0.1)
    worker.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
    # The reconciler (a chore every minute in a task): both queues empty at two passes in a row, so
    # the orphan's message certainly is lost and it is republished.
    assert worker.reconciler is not None
    worker.reconciler.after_seconds = 30
    worker.reconciler.run()
    assert worker.reconciler.run().republished == 1
    # Visibility calls the short run may not have needed (leases are extended after half the
    # visibility timeout; jobs not started at shutdown are released), through the worker's source.
    boto3.client("sqs", region_name=REGION).send_message(
        QueueUrl=settings.queue_url, MessageBody=JobMessage(job_id=new_job_id(), image=image).encode()
    )
    held = []
    for _ in range(10):
        held = worker.source.receive(1, 1)
        if held:
            break
    assert held
    worker.source.extend(held, 30)
    worker.source.release(held)
    # The dead-letter sweep (it runs every few minutes in a task).
    sweeper = getattr(worker, "sweeper", None)
    if sweeper is not None:
        sweeper()
    recorder.on = False

    assert statuses == {inline: "succeeded", claimed: "succeeded", lost: "failed", urgent: "succeeded"}
    for job_id, status in ((cancelled, JobStatus.CANCELLED), (late, JobStatus.EXPIRED)):
        record = store.get(job_id)
        assert record is not None and record.status is status
        assert record.image_ref == f"s3://{bucket}/{payloads.PREFIX}{job_id}"
    with pytest.raises(Exception, match=r"404|Not Found|NoSuchKey"):
        boto3.client("s3", region_name=REGION).head_object(Bucket=bucket, Key=f"{payloads.PREFIX}{claimed}")

    granted = _task_role_actions()
    assert recorder.actions <= granted, f"the worker calls {recorder.actions - granted} outside its task role"
    assert granted - recorder.actions == GRANTED_NOT_CALLED, "the task role grants more than the worker uses"


# ---------------------------------------------------------------- stopping: the task and the image agree


def _worker_container() -> dict[str, Any]:
    container: dict[str, Any] = _cfn()["Resources"][TASK]["Properties"]["ContainerDefinitions"][0]
    return container


def test_stop_timeout_covers_the_drain_and_the_agent_uses_it_too() -> None:
    container = _worker_container()
    assert container["StopTimeout"] == {"Ref": "WorkerStopTimeout"}
    parameter = tpl.load()["Parameters"]["WorkerStopTimeout"]
    # The batch in flight, its writes and the callbacks' 2 s take seconds (the artefact test measures
    # SIGTERM to exit); below 10 s a slow write would be cut off, over 120 s ECS refuses the value.
    assert 10 <= int(parameter["MinValue"]) <= int(parameter["Default"]) <= int(parameter["MaxValue"]) <= 120
    user_data = json.dumps(_cfn()["Resources"]["WorkerLaunchTemplate"]["Properties"])
    assert "ECS_CONTAINER_STOP_TIMEOUT=${WorkerStopTimeout}s" in user_data


def test_the_task_gives_the_image_what_it_expects() -> None:
    container = _worker_container()
    # The image's CMD is exec form with no init of its own: ECS runs one as PID 1, which forwards
    # SIGTERM to the worker and reaps its children (what `docker run --init` does locally).
    assert container["LinuxParameters"]["InitProcessEnabled"] is True
    assert "EntryPoint" not in container and "Command" not in container  # the image's CMD runs
    # Read-only root: the image compiles its bytecode at build time and sets HOME=/tmp, the tmpfs.
    assert container["ReadonlyRootFilesystem"] is True
    assert {"ContainerPath": "/tmp", "Size": 512} in container["LinuxParameters"]["Tmpfs"]
    # The callback secret is always injected, so the image must carry the callback sender's packages.
    assert [s["Name"] for s in container["Secrets"]] == ["TWOPASS_CALLBACK_SECRET"]


def test_a_task_that_cannot_use_its_gpu_fails_instead_of_serving_on_the_cpu() -> None:
    container = _worker_container()
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    # CUDA required (no "?", no TWOPASS_ALLOW_CPU_FALLBACK): the worker exits at start without it,
    # and the service's circuit breaker stops a rollout whose tasks keep exiting.
    assert env["TWOPASS_PROVIDERS"] == "cuda,cpu"
    assert "TWOPASS_ALLOW_CPU_FALLBACK" not in env
    settings = Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.session_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    breaker = _cfn()["Resources"]["WorkerService"]["Properties"]["DeploymentConfiguration"]["DeploymentCircuitBreaker"]
    assert breaker == {"Enable": True, "Rollback": True}
    # The health check loads the model as configured: a task that loses its GPU turns unhealthy.
    check = container["HealthCheck"]
    assert check["Command"] == ["CMD", "python", "-m", "twopass.worker", "--preflight"]
    # ECS's limits: interval 5-300 s, timeout 2-60 s, start period 0-300 s; the start period covers
    # the model load, the timeout a load and a warm-up batch on a busy host.
    assert 60 <= check["Interval"] <= 300 and 10 <= check["Timeout"] <= 60 and 60 <= check["StartPeriod"] <= 300


def test_a_gpu_task_serving_on_the_cpu_raises_an_alarm() -> None:
    from twopass.observability.metrics import Metric

    alarm = _cfn()["Resources"]["GpuTaskOnCpuAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("twopass", Metric.SERVING_PROVIDER.value)
    # The dimensions the worker reports (tests/unit/test_providers.py reads them off its EMF output).
    assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {
        "service": "twopass-worker", "provider": "CPUExecutionProvider", "requested": "CUDAExecutionProvider",
    }  # fmt: skip
    assert (alarm["Statistic"], alarm["ComparisonOperator"], alarm["Threshold"]) == ("Sum", "GreaterThanThreshold", 0)
    assert alarm["TreatMissingData"] == "notBreaching"

"""Completion events: every final write of the store announced, batched PutEvents, retries, never a job's failure."""

from __future__ import annotations

import json
from typing import Any

import boto3

from twopass.config import Settings
from twopass.jobs.base import JobRecord, JobStatus
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.jobs.memory import MemoryJobStore
from twopass.notify.events import EventPublisher, attach
from twopass.queue.base import JobMessage
from twopass.worker.chores.deadletter import sweep

RESULT = {"model": "slow", "label": "tabby", "top_k": [{"label": "tabby", "probability": 0.75, "class_id": 281}]}


class FlakyBus:
    """An EventBridge stand-in that refuses the first ``failures`` calls, then some entries once."""

    def __init__(self, failures: int = 0, refuse_first_entry: bool = False) -> None:
        self.failures = failures
        self.refuse_first_entry = refuse_first_entry
        self.calls: list[list[dict[str, Any]]] = []
        self.delivered: list[dict[str, Any]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.calls.append(list(Entries))
        if self.failures:
            self.failures -= 1
            raise ConnectionError("bus unreachable")
        if self.refuse_first_entry:
            self.refuse_first_entry = False
            self.delivered.extend(Entries[1:])
            results = [{"ErrorCode": "InternalFailure"}] + [{"EventId": "x"}] * (len(Entries) - 1)
            return {"FailedEntryCount": 1, "Entries": results}
        self.delivered.extend(Entries)
        return {"FailedEntryCount": 0, "Entries": [{"EventId": "x"}] * len(Entries)}


def no_wait_publisher(bus: FlakyBus, **kwargs: Any) -> EventPublisher:
    from twopass.backoff import Backoff

    return EventPublisher("jobs", bus, backoff=lambda: Backoff(base=0.0, cap=0.0), **kwargs)


def test_every_final_state_is_announced_once_with_its_detail() -> None:
    store, bus = MemoryJobStore(), FlakyBus()
    store.on_final(no_wait_publisher(bus, background=False))
    for job_id in ("a" * 32, "b" * 32, "c" * 32, "d" * 32):
        store.create(JobRecord(job_id=job_id, owner="o", batch_id="batch1"))
    assert store.succeed("a" * 32, RESULT) and not store.succeed("a" * 32, RESULT)  # the duplicate is silent
    assert store.fail("b" * 32, "boom")
    assert store.cancel("c" * 32)
    assert store.expire("d" * 32, "deadline passed")
    kinds = [e["DetailType"] for e in bus.delivered]
    assert kinds == ["Job Succeeded", "Job Failed", "Job Cancelled", "Job Expired"]
    first = json.loads(bus.delivered[0]["Detail"])
    assert first["job_id"] == "a" * 32 and first["owner"] == "o" and first["batch_id"] == "batch1"
    assert first["label"] == "tabby" and first["top_k"] == RESULT["top_k"] and first["error"] is None
    assert json.loads(bus.delivered[1]["Detail"])["error"] == "boom"
    assert all(e["Source"] == "twopass" and e["EventBusName"] == "jobs" for e in bus.delivered)


def test_background_sender_batches_by_ten_and_retries() -> None:
    bus = FlakyBus(failures=2, refuse_first_entry=True)
    publisher = no_wait_publisher(bus, linger_seconds=0.5)
    for i in range(23):
        publisher(JobRecord(job_id=f"{i:032x}", status=JobStatus.SUCCEEDED, result=RESULT))
    publisher.close()
    assert max(len(call) for call in bus.calls) == 10
    # Every event arrived once: the failed calls and the refused entry were sent again.
    assert sorted(json.loads(e["Detail"])["job_id"] for e in bus.delivered) == [f"{i:032x}" for i in range(23)]


def test_a_bus_that_never_answers_is_counted_and_never_raises() -> None:
    store, bus = MemoryJobStore(), FlakyBus(failures=100)
    publisher = no_wait_publisher(bus, background=False, attempts=3)
    store.on_final(publisher)
    store.create(JobRecord(job_id="e" * 32))
    assert store.succeed("e" * 32, RESULT)  # the write stands
    assert len(bus.calls) == 3 and bus.delivered == []
    record = store.get("e" * 32)
    assert record is not None and record.status is JobStatus.SUCCEEDED


def test_dynamodb_store_and_the_dead_letter_sweep_publish_to_the_template_bus(aws: Settings) -> None:
    """The template's bus and example rule (moto): a job the sweep marks failed reaches the rule's queue."""
    store = DynamoJobStore(aws.table_name)
    publisher = attach(store, aws.event_bus, background=False)
    assert publisher is not None and aws.event_bus
    sqs = boto3.client("sqs", region_name="us-east-1")
    job = JobRecord(job_id="f" * 32, owner="tenant")
    store.create(job)
    dlq = sqs.create_queue(QueueName="sweep-test-dlq")["QueueUrl"]
    sqs.send_message(QueueUrl=dlq, MessageBody=JobMessage(job_id=job.job_id, image=b"x").encode())
    assert sweep(dlq, store) == 1
    queues = sqs.list_queues()["QueueUrls"]
    (events_queue,) = [q for q in queues if "JobEventsQueue" in q]
    (message,) = sqs.receive_message(QueueUrl=events_queue, MaxNumberOfMessages=10)["Messages"]
    event = json.loads(message["Body"])
    assert event["source"] == "twopass" and event["detail-type"] == "Job Failed"
    assert event["detail"]["job_id"] == job.job_id and event["detail"]["owner"] == "tenant"
    assert "dead-lettered" in event["detail"]["error"]
    assert event["detail"]["event_id"] == f"{job.job_id}-0-0-failed"
    swept = store.get(job.job_id)
    assert swept is not None and swept.event_owed is None  # owed in the sweep's write, settled once out
    assert attach(store, "") is None  # off

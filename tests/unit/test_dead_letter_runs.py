"""Dead letters belong to one run of a job: the sweep and the redrive leave a retried job alone.

A message dead-lettered in a job's first run stays in the DLQ (for an operator's redrive). Once the
sweep has failed the job and its owner has retried it, every later sweep meets that old message
again: it must not fail the retry, and the retry's result must be accepted. Each store twin
(DynamoDB in moto, memory) against the template's real dead-letter queue in moto.
"""

from __future__ import annotations

from typing import Any

import boto3

from tests.unit.test_job_control import KEY_A, api, queued_job
from twopass.config import Settings
from twopass.jobs.base import JobRecord, JobStatus, JobStore, new_job_id
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.models.runtime import Classifier
from twopass.queue.base import JobMessage
from twopass.tools.redrive import dead_letter_queue_url, redrive
from twopass.worker.chores.deadletter import sweep

RESULT: dict[str, Any] = {"model": "slow", "label": "tabby", "top_k": []}


def sqs() -> Any:
    return boto3.client("sqs", region_name="us-east-1")


def dead_letter(settings: Settings, message: JobMessage) -> str:
    """Put ``message`` into the job queue's DLQ, as maxReceiveCount crashed deliveries would; the DLQ's URL."""
    dlq = dead_letter_queue_url(settings.queue_url)
    assert dlq is not None
    sqs().send_message(QueueUrl=dlq, MessageBody=message.encode())
    return dlq


def sweep_again(dlq: str, store: JobStore) -> int:
    """One sweep that meets every message in the DLQ once, as each later periodic sweep does (they are
    hidden for 5 minutes after each; here visible again at once, and so counted to stop)."""
    attrs = sqs().get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])
    return sweep(dlq, store, visibility=0, max_messages=int(attrs["Attributes"]["ApproximateNumberOfMessages"]))


def queued(settings: Settings) -> list[JobMessage]:
    out = sqs().receive_message(QueueUrl=settings.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [JobMessage.decode(m["Body"]) for m in out.get("Messages", [])]


def crashed_first_run(store: JobStore, settings: Settings) -> tuple[str, str]:
    """A job whose first run's message was dead-lettered while a crashed worker had it running."""
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id, owner="o"))
    assert store.start(job_id, "crashed-worker") is not None
    return job_id, dead_letter(settings, JobMessage(job_id=job_id, image=b"img"))


def test_an_old_dead_letter_never_fails_the_owners_retry(store: JobStore, aws: Settings) -> None:
    job_id, dlq = crashed_first_run(store, aws)
    assert sweep_again(dlq, store) == 1
    failed = store.get(job_id)
    assert failed is not None and failed.status is JobStatus.FAILED and failed.run == 0

    assert store.retry(job_id)  # the owner's POST /job/{id}/retry
    retried = store.get(job_id)
    assert retried is not None and retried.status is JobStatus.QUEUED and retried.run == 1
    assert store.start(job_id, "worker-2") is not None  # the retry runs

    # Every later sweep meets the first run's message again (visibility 0): it belongs to run 0.
    assert sweep_again(dlq, store) == 0
    assert sweep_again(dlq, store) == 0
    running = store.get(job_id)
    assert running is not None and running.status is JobStatus.RUNNING and running.error is None

    assert store.succeed(job_id, RESULT)  # the retry's result is accepted
    done = store.get(job_id)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == RESULT
    assert [entry["status"] for entry in done.history] == ["failed"]

    # Attempt-aware, not blind: a retry whose own (run 1) message dead-letters is still failed by it.
    other, _ = crashed_first_run(store, aws)
    assert sweep_again(dlq, store) == 1
    assert store.retry(other) and store.start(other, "worker-2") is not None
    dead_letter(aws, JobMessage(job_id=other, image=b"img", run=1))
    assert sweep_again(dlq, store) == 1  # the run-1 message; the run-0 ones are left alone
    record = store.get(other)
    assert record is not None and record.status is JobStatus.FAILED and record.run == 1
    assert record.error is not None and "dead-lettered" in record.error


def test_redrive_drops_a_retried_job_s_old_message(store: JobStore, aws: Settings) -> None:
    stale_id, dlq = crashed_first_run(store, aws)
    current_id, _ = crashed_first_run(store, aws)
    # The worker failed this one itself on its last delivery: the sweep's first look is refused, yet
    # the message still belongs to run 0 and never touches run 1.
    assert store.fail(stale_id, "inference failed on the last delivery")
    assert sweep_again(dlq, store) == 1
    assert store.retry(stale_id)
    assert sweep_again(dlq, store) == 0
    assert store.start(stale_id, "worker-2") is not None

    report = redrive(dlq, aws.queue_url, store)
    assert (report.moved, report.reopened, report.dropped_stale) == (1, 1, 1)
    assert [m.job_id for m in queued(aws)] == [current_id]  # the old run's message is not sent again
    retried = store.get(stale_id)
    assert retried is not None and retried.status is JobStatus.RUNNING  # untouched
    reopened = store.get(current_id)
    assert reopened is not None and reopened.status is JobStatus.QUEUED


def test_through_the_api_the_retry_s_message_carries_its_run(aws: Settings, fast_classifier: Classifier) -> None:
    """The same story with the API's own messages: its retry publishes run 1, which the sweep tells apart."""
    store = DynamoJobStore(aws.table_name)
    with api(aws, fast_classifier, inline_image_bytes=1) as client:  # claim-checked, so retryable
        job_id = queued_job(client)
        (first,) = [JobMessage.decode(m["Body"]) for m in received(aws.queue_url)]
        assert first.job_id == job_id and first.run == 0
        assert store.start(job_id, "crashed-worker") is not None
        dlq = dead_letter(aws, first)  # maxReceiveCount crashed deliveries later
        assert sweep_again(dlq, store) == 1
        response = client.post(f"/job/{job_id}/retry", headers=KEY_A)
        assert response.status_code == 200, response.text
        (again,) = [JobMessage.decode(m["Body"]) for m in received(aws.queue_url)]
        assert again.job_id == job_id and again.run == 1
        assert store.start(job_id, "worker-2") is not None
        assert sweep_again(dlq, store) == 0
        assert store.succeed(job_id, RESULT)
        body = client.get(f"/job/{job_id}", headers=KEY_A).json()
        assert body["status"] == "succeeded" and body["attempts"] == 2 and body["history"][0]["status"] == "failed"


def received(queue_url: str) -> list[dict[str, Any]]:
    """Take every message off the queue (deleted, as a worker's ack would)."""
    out = sqs().receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    taken: list[dict[str, Any]] = out.get("Messages", [])
    for message in taken:
        sqs().delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return taken


def test_a_message_carries_its_run_and_first_runs_read_as_before() -> None:
    first = JobMessage(job_id="a" * 32, image=b"x")
    assert '"run"' not in first.encode() and JobMessage.decode(first.encode()).run == 0
    again = JobMessage(job_id="a" * 32, image=b"x", run=2)
    assert JobMessage.decode(again.encode()).run == 2

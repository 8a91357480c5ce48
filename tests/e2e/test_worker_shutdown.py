"""SIGTERM on real worker processes against the emulator: prompt exits, and no job lost either way.

Each worker here consumes a queue of its own (the shared stack's worker never sees these jobs) with
20 s long polls, the longest SQS allows, so an exit that waited for a poll to end would show.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from twopass.config import REPO_ROOT
from twopass.jobs.base import JobRecord, JobStatus, new_job_id
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.local.stack import LocalStack
from twopass.queue.base import JobMessage
from twopass.queue.sqs import SqsPublisher

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: Idle: a worker inside its long polls exits within this after SIGTERM (issue 11).
IDLE_EXIT_SECONDS = 2.0
#: Short leases, so what an abandoned poll took after its worker exited comes back quickly.
VISIBILITY_SECONDS = 4


@dataclass
class Rig:
    """A private queue on the shared stack's emulator, its table, and worker processes on that queue."""

    stack: LocalStack
    queue_url: str
    store: DynamoJobStore
    publisher: SqsPublisher
    log_dir: Path

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        env = self.stack.app_env()
        env.update(
            TWOPASS_QUEUE_URL=self.queue_url,
            TWOPASS_POLL_WAIT_SECONDS="20",
            TWOPASS_VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY_SECONDS),
            TWOPASS_HEARTBEAT_SECONDS="0.5",
            TWOPASS_MAX_BATCH_SIZE="4",
            TWOPASS_RECEIVERS="2",
        )
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "twopass.worker"], env=env, stdout=log, stderr=log, cwd=REPO_ROOT
        )
        log.close()  # the child has its own copy
        deadline = time.monotonic() + 60
        while not any(beat.info.get("pid") == proc.pid for beat in self.store.workers()):
            assert proc.poll() is None, f"{name} exited early: {(self.log_dir / f'{name}.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{name} never sent a heartbeat"
            time.sleep(0.1)
        return proc

    def submit(self, image: bytes) -> str:
        job_id = new_job_id()
        self.store.create(JobRecord(job_id=job_id))
        self.publisher.publish(JobMessage(job_id=job_id, image=image))
        return job_id

    def records(self, job_ids: list[str]) -> list[JobRecord]:
        found = [self.store.get(j) for j in job_ids]
        assert all(r is not None for r in found)
        return [r for r in found if r is not None]

    def wait_succeeded(self, job_ids: list[str], timeout: float) -> list[JobRecord]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.records(job_ids)
            if all(r.status is JobStatus.SUCCEEDED for r in records):
                return records
            assert time.monotonic() < deadline, [r.status.value for r in records]
            time.sleep(0.1)


def terminate(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM; seconds until the process has exited."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    elapsed = time.monotonic() - started
    assert code == 0
    return elapsed


@pytest.fixture
def rig(stack: LocalStack, tmp_path: Path) -> Iterator[Rig]:
    sqs = stack.client("sqs")
    name = f"shutdown-{uuid.uuid4().hex[:8]}"
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})
    queue_url = sqs.create_queue(
        QueueName=name, Attributes={"VisibilityTimeout": str(VISIBILITY_SECONDS), "RedrivePolicy": redrive}
    )["QueueUrl"]
    store = DynamoJobStore(stack.service_env["TWOPASS_TABLE_NAME"], client=stack.client("dynamodb"))
    before = {beat.worker_id for beat in store.workers()}
    try:
        yield Rig(stack, queue_url, store, SqsPublisher(queue_url, client=sqs), tmp_path)
    finally:
        # A worker that failed the test must not stay in the shared table's heartbeats.
        for beat in store.workers():
            if beat.worker_id not in before:
                store.forget_worker(beat.worker_id)
        sqs.delete_queue(QueueUrl=queue_url)
        sqs.delete_queue(QueueUrl=dlq_url)


@pytest.mark.timeout(300)
def test_sigterm_exits_promptly_and_loses_no_job(rig: Rig, cat_jpeg: bytes) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # Busy: the batch in flight finishes, the rest is released at once.
        ids = [rig.submit(cat_jpeg) for _ in range(40)]
        busy = rig.start_worker("busy")
        procs.append(busy)
        deadline = time.monotonic() + 60
        while not any(r.status is JobStatus.SUCCEEDED for r in rig.records(ids)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        busy_exit = terminate(busy)
        records = rig.records(ids)
        assert not [r for r in records if r.status is JobStatus.RUNNING], "no job left half-done"
        done = [r for r in records if r.status is JobStatus.SUCCEEDED]
        assert len(done) + len([r for r in records if r.status is JobStatus.QUEUED]) == len(ids)
        # At most the batch on the model and the one ready behind it were still to finish.
        longest_batch = max(r.result["inference_ms"] for r in done if r.result is not None) / 1000
        assert busy_exit < IDLE_EXIT_SECONDS + 2 * longest_batch, (busy_exit, longest_batch)

        # Everything left is picked up by the next worker: released messages at once, anything an
        # abandoned poll took after the first worker exited once its visibility runs out.
        idle = rig.start_worker("idle")
        procs.append(idle)
        rig.wait_succeeded(ids, timeout=60)

        # Idle, inside 20 s long polls: out well within the poll.
        idle_exit = terminate(idle)
        assert idle_exit < IDLE_EXIT_SECONDS, idle_exit

        # Sent while the exited worker's polls may still be open on the server: not lost.
        late = rig.submit(cat_jpeg)
        last = rig.start_worker("last")
        procs.append(last)
        (record,) = rig.wait_succeeded([late], timeout=60)
        assert record.attempts == 1
        assert terminate(last) < IDLE_EXIT_SECONDS
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

"""The batching worker against the in-memory queue and store (same interfaces as SQS/DynamoDB)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from tests.conftest import CAT_LABELS
from twopass.config import Settings
from twopass.exceptions import DependencyError
from twopass.jobs.base import JobRecord, JobStatus, Start, new_job_id
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.queue.base import Delivery, JobMessage
from twopass.queue.memory import MemoryQueue
from twopass.worker.runner import Worker

SETTINGS = Settings().replace(
    max_batch_size=8, max_wait_ms=20, receivers=2, poll_wait_seconds=0.2, heartbeat_seconds=0.1
)


class Harness:
    def __init__(self, classifier: Classifier, queue: MemoryQueue, store: MemoryJobStore, settings: Settings) -> None:
        self.queue, self.store = queue, store
        self.worker = Worker(classifier, queue, store, settings, worker_id="test-worker")
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def submit(self, image: bytes) -> str:
        job_id = new_job_id()
        self.store.create(JobRecord(job_id=job_id))
        self.queue.publish(JobMessage(job_id=job_id, image=image))
        return job_id

    def wait_final(self, job_ids: Sequence[str], timeout: float = 30) -> list[JobRecord]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = [self.store.get(j) for j in job_ids]
            if all(r is not None and r.final for r in records):
                return [r for r in records if r is not None]
            time.sleep(0.02)
        raise AssertionError(f"jobs not final after {timeout}s: {[self.store.get(j) for j in job_ids]}")


@pytest.fixture
def harness(slow_classifier: Classifier) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(queue: MemoryQueue | None = None, store: MemoryJobStore | None = None, **overrides: Any) -> Harness:
        q = queue if queue is not None else MemoryQueue(visibility=5)
        s = store if store is not None else MemoryJobStore()
        h = Harness(slow_classifier, q, s, SETTINGS.replace(**overrides))
        made.append(h)
        return h

    yield make
    for h in made:
        h.worker.stop()
        h.thread.join(timeout=30)


def test_processes_real_photos_and_acks_after_recording(
    harness: Callable[..., Harness], cat_jpeg: bytes, photo: Any
) -> None:
    h = harness()
    h.thread.start()
    ids = [h.submit(cat_jpeg), h.submit(photo("coffee.jpg"))]
    cat, coffee = h.wait_final(ids)
    assert cat.status is JobStatus.SUCCEEDED and cat.result is not None
    assert cat.result["label"] in CAT_LABELS
    assert coffee.result is not None and coffee.result["label"] == "espresso"
    assert cat.attempts == 1
    deadline = time.monotonic() + 5
    while len(h.queue) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(h.queue) == 0 and h.queue.acked == 2


def test_backlog_is_processed_in_full_batches(harness: Callable[..., Harness], cat_jpeg: bytes) -> None:
    h = harness()
    ids = [h.submit(cat_jpeg) for _ in range(24)]
    h.thread.start()
    records = h.wait_final(ids)
    assert all(r.status is JobStatus.SUCCEEDED for r in records)
    assert h.worker.stats.largest_batch == 8
    assert h.worker.stats.batches < 24


def test_a_lone_job_is_not_held_back_for_a_full_batch(harness: Callable[..., Harness], cat_jpeg: bytes) -> None:
    h = harness(max_wait_ms=50, max_batch_size=64)
    h.thread.start()
    time.sleep(0.3)  # the worker is idle, polling
    start = time.monotonic()
    (job,) = h.wait_final([h.submit(cat_jpeg)], timeout=10)
    elapsed = time.monotonic() - start
    assert job.status is JobStatus.SUCCEEDED
    assert job.result is not None and job.result["batch_size"] == 1
    # Inference is ~50-200 ms on a loaded CI core; waiting for a batch of 64 would never end.
    assert elapsed < 3


def test_duplicate_delivery_is_harmless_and_written_once(harness: Callable[..., Harness], cat_jpeg: bytes) -> None:
    h = harness()
    job_id = h.submit(cat_jpeg)
    h.queue.publish(JobMessage(job_id=job_id, image=cat_jpeg))  # the same job delivered twice
    h.thread.start()
    h.wait_final([job_id])
    deadline = time.monotonic() + 10
    while len(h.queue) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(h.queue) == 0
    assert h.store.final_writes[job_id] == 1
    assert h.worker.stats.duplicates >= 1


def test_invalid_image_fails_the_job_with_a_reason(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.thread.start()
    (record,) = h.wait_final([h.submit(b"definitely not an image")])
    assert record.status is JobStatus.FAILED
    assert record.error is not None and "invalid image" in record.error


class FlakyStore(MemoryJobStore):
    """A table that is unreachable for the first ``outages`` result writes."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

    def succeed(self, job_id: str, result: dict[str, Any], *, start: Start | None = None) -> bool:
        if self.outages > 0:
            self.outages -= 1
            raise DependencyError("table unreachable")
        return super().succeed(job_id, result, start=start)


def test_table_outage_retries_then_succeeds_without_losing_the_job(
    harness: Callable[..., Harness], cat_jpeg: bytes
) -> None:
    store = FlakyStore(outages=2)
    h = harness(store=store)
    h.thread.start()
    (record,) = h.wait_final([h.submit(cat_jpeg)])
    assert record.status is JobStatus.SUCCEEDED


def test_long_outage_leaves_the_message_for_redelivery(harness: Callable[..., Harness], cat_jpeg: bytes) -> None:
    store = FlakyStore(outages=4)  # more than one delivery's retries
    queue = MemoryQueue(visibility=1)
    h = harness(queue=queue, store=store)
    h.thread.start()
    (record,) = h.wait_final([h.submit(cat_jpeg)], timeout=30)
    assert record.status is JobStatus.SUCCEEDED
    assert record.attempts >= 2  # it came back after its visibility expired


class RecordingQueue(MemoryQueue):
    def __init__(self) -> None:
        super().__init__(visibility=60)
        self.released: list[str] = []

    def release(self, deliveries: Sequence[Delivery]) -> None:
        self.released.extend(d.message_id for d in deliveries)
        super().release(deliveries)


def test_stop_finishes_the_batch_and_releases_unstarted_messages(
    harness: Callable[..., Harness], cat_jpeg: bytes
) -> None:
    queue = RecordingQueue()
    h = harness(queue=queue, max_batch_size=2, max_wait_ms=0, receivers=1)
    ids = [h.submit(cat_jpeg) for _ in range(30)]
    h.thread.start()
    deadline = time.monotonic() + 20
    while h.worker.stats.batches == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    h.worker.stop()
    h.thread.join(timeout=30)
    assert not h.thread.is_alive()
    records = [h.store.get(j) for j in ids]
    finished = [r for r in records if r is not None and r.status is JobStatus.SUCCEEDED]
    untouched = [r for r in records if r is not None and r.status is JobStatus.QUEUED]
    running = [r for r in records if r is not None and r.status is JobStatus.RUNNING]
    assert finished, "the batch in flight was finished"
    assert not running, "no job left half-done"
    assert len(finished) + len(untouched) == 30
    # Everything not finished is back on the queue at once, not after a visibility timeout.
    assert len(queue) == len(untouched)
    assert queue.released
    assert h.store.workers() == []  # heartbeat removed on clean exit


def test_heartbeat_reports_the_model_and_counters(harness: Callable[..., Harness], cat_jpeg: bytes) -> None:
    h = harness()
    h.thread.start()
    h.wait_final([h.submit(cat_jpeg)])
    time.sleep(0.3)
    (beat,) = h.store.workers()
    assert beat.worker_id == "test-worker"
    assert beat.info["model"] == "efficientnet-lite2"
    assert beat.info["succeeded"] == 1
    assert beat.info["model_card"]["sha256"]


def wait_for(condition: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_idle_stop_does_not_wait_out_the_long_poll(harness: Callable[..., Harness], cat_jpeg: bytes) -> None:
    queue = RecordingQueue()  # 60 s visibility: a message left to time out would not come back in this test
    h = harness(queue=queue, poll_wait_seconds=30, receivers=1)
    h.thread.start()
    wait_for(h.store.workers)  # running, its receiver inside a 30 s poll
    time.sleep(0.2)
    started = time.monotonic()
    h.worker.stop()
    h.thread.join(timeout=10)
    assert not h.thread.is_alive()
    assert time.monotonic() - started < 2
    assert h.store.workers() == []

    # The abandoned receiver is still inside its poll: it takes the next job and hands it back at once.
    job_id = h.submit(cat_jpeg)
    wait_for(lambda: queue.released)
    waiting = h.store.get(job_id)
    assert waiting is not None and waiting.status is JobStatus.QUEUED
    successor = harness(queue=queue, store=h.store)
    successor.thread.start()
    (record,) = successor.wait_final([job_id], timeout=20)
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 1


def test_busy_stop_waits_only_for_the_batches_already_started(harness: Callable[..., Harness], cat_jpeg: bytes) -> None:
    h = harness(max_batch_size=4, max_wait_ms=0, receivers=2, poll_wait_seconds=30)
    ids = [h.submit(cat_jpeg) for _ in range(40)]
    h.thread.start()
    wait_for(lambda: h.worker.stats.batches >= 1, timeout=30)
    started = time.monotonic()
    h.worker.stop()
    h.thread.join(timeout=30)
    elapsed = time.monotonic() - started
    stats = h.worker.stats
    # At most the batch on the model and the one marked running behind it still had to run.
    assert elapsed < 2 + 2 * stats.inference_seconds / stats.batches * 1.5, (elapsed, stats.summary())
    records = [h.store.get(j) for j in ids]
    assert not [r for r in records if r is not None and r.status is JobStatus.RUNNING]
    successor = harness(queue=h.queue, store=h.store)
    successor.thread.start()
    assert all(r.status is JobStatus.SUCCEEDED for r in successor.wait_final(ids, timeout=60))

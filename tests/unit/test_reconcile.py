"""The reconciler republishes or fails jobs whose message an outage lost, and only those."""

from __future__ import annotations

import time

from twopass.jobs.base import JobRecord, JobStatus
from twopass.jobs.memory import MemoryJobStore
from twopass.queue.base import JobMessage
from twopass.queue.memory import MemoryQueue
from twopass.worker.chores.reconcile import LOST_REASON, Reconciler


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def setup(after: float = 60, retention: float = 3600) -> tuple[MemoryJobStore, MemoryQueue, Clock, Reconciler]:
    store, queue, clock = MemoryJobStore(), MemoryQueue(), Clock()
    reconciler = Reconciler(store, queue, after_seconds=after, retention_seconds=retention, clock=clock)
    return store, queue, clock, reconciler


def orphan(store: MemoryJobStore, job_id: str, created_at: float, image_ref: str | None = None) -> None:
    store.create(JobRecord(job_id=job_id, created_at=created_at, image_ref=image_ref, context={"request_id": "r1"}))


def test_orphans_are_resolved_once_the_queue_is_seen_empty_twice() -> None:
    store, queue, clock, reconciler = setup()
    orphan(store, "a" * 32, clock.now - 120, image_ref="s3://bucket/payloads/" + "a" * 32)
    orphan(store, "b" * 32, clock.now - 120)
    first = reconciler.run()
    assert (first.candidates, first.republished, first.failed) == (2, 0, 0)  # one empty reading is not enough
    second = reconciler.run()
    assert (second.republished, second.failed) == (1, 1)
    (delivery,) = queue.receive(10, 0)
    assert delivery.message.job_id == "a" * 32
    assert delivery.message.image_ref == "s3://bucket/payloads/" + "a" * 32
    assert delivery.message.context == {"request_id": "r1"}
    failed = store.get("b" * 32)
    assert failed is not None and failed.status is JobStatus.FAILED and failed.error == LOST_REASON


def test_jobs_whose_message_may_still_wait_are_left_alone() -> None:
    store, queue, clock, reconciler = setup()
    orphan(store, "c" * 32, clock.now - 120)
    queue.publish(JobMessage(job_id="d" * 32, image=b"x"))  # a backlog: messages may be behind
    assert reconciler.run().failed == reconciler.run().failed == 0
    young = "e" * 32
    orphan(store, young, clock.now - 5)  # younger than after_seconds
    queue.receive(10, 0)
    queue.ack(queue.receive(10, 0))
    assert store.get(young) is not None and store.get(young).status is JobStatus.QUEUED  # type: ignore[union-attr]


def test_past_the_queue_retention_no_message_can_exist() -> None:
    store, queue, clock, reconciler = setup(retention=600)
    orphan(store, "f" * 32, clock.now - 900)
    queue.publish(JobMessage(job_id="0" * 32, image=b"x"))  # the queue is busy
    report = reconciler.run()
    assert report.failed == 1


def test_started_jobs_are_never_touched() -> None:
    store, _, clock, reconciler = setup()
    orphan(store, "1" * 32, clock.now - 120)
    store.start("1" * 32, "w1")
    reconciler.run()
    assert reconciler.run().candidates == 0
    record = store.get("1" * 32)
    assert record is not None and record.status is JobStatus.RUNNING


def test_a_republished_job_is_not_republished_again() -> None:
    store, queue, clock, reconciler = setup()
    orphan(store, "2" * 32, clock.now - 120, image_ref="s3://bucket/payloads/" + "2" * 32)
    reconciler.run()
    assert reconciler.run().republished == 1
    queue.ack(queue.receive(10, 0))  # consumed without being started (e.g. a crash): queue empty again
    reconciler.run()
    assert reconciler.run().republished == 0


def test_a_republished_message_carries_the_job_s_run() -> None:
    """A retried job's orphan goes out as its current run, so a dead letter of it acts on that run."""
    store, queue, clock, reconciler = setup()
    history = [{"status": "failed", "attempts": 1, "retried_at": clock.now - 200}]
    store.create(JobRecord(job_id="f" * 32, created_at=clock.now - 120, image_ref="s3://b/p", history=history))
    reconciler.run()
    assert reconciler.run().republished == 1
    (delivery,) = queue.receive(10, 0)
    assert delivery.message.run == 1


def test_events_still_owed_long_after_their_write_are_announced_again() -> None:
    from tests.unit.test_events import FlakyBus, no_wait_publisher

    store, _, clock, reconciler = setup()
    bus = FlakyBus(failures=1)
    store.on_final(no_wait_publisher(bus, background=False, attempts=1, store=store))
    orphan(store, "a" * 32, clock.now - 120)
    assert store.cancel("a" * 32)  # its event failed to go out: owed on the record
    clock.now += 30
    assert reconciler.run().reannounced == 0  # not a minute yet: its publisher may still be at it
    clock.now += 60
    assert reconciler.run().reannounced == 1 and len(bus.delivered) == 1
    assert reconciler.run().reannounced == 0  # settled

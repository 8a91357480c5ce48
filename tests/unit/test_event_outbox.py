"""Completion events at least once: owed durably by whoever wrote the final state, until published.

A worker's result owes its event through the job's queue message (deleted only once the event is
out); any other writer records the event as owed on the job in the final write itself, the
publisher clears it, and the reconciler publishes again what stays owed. Every copy of one final
state carries one ``detail.event_id``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.test_events import RESULT, FlakyBus, no_wait_publisher
from twopass.config import Settings
from twopass.jobs.base import JobRecord, JobStatus, JobStore, new_job_id
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.notify.events import EventPublisher, event_id
from twopass.queue.base import JobMessage
from twopass.queue.memory import MemoryQueue
from twopass.worker.chores.reconcile import Reconciler
from twopass.worker.runner import Worker

SETTINGS = Settings().replace(max_batch_size=8, max_wait_ms=20, poll_wait_seconds=0.2, heartbeat_seconds=0.1)


def details(bus: FlakyBus) -> list[dict[str, Any]]:
    return [json.loads(entry["Detail"]) for entry in bus.delivered]


def reconciler(store: JobStore) -> Reconciler:
    return Reconciler(store, MemoryQueue(), after_seconds=3600, retention_seconds=7200, owed_after_seconds=0)


def test_one_final_state_has_one_event_id_and_the_next_run_another() -> None:
    store, bus = MemoryJobStore(), FlakyBus()
    store.on_final(no_wait_publisher(bus, background=False, store=store))
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id))
    assert store.fail(job_id, "boom")
    failed = store.get(job_id)
    assert failed is not None
    store.reannounce(failed)  # as a redelivery would: the same final state again
    assert store.retry(job_id) and store.succeed(job_id, RESULT)
    ids = [d["event_id"] for d in details(bus)]
    assert ids == [f"{job_id}-0-0-failed", f"{job_id}-0-0-failed", f"{job_id}-1-0-succeeded"]
    done = store.get(job_id)
    assert done is not None and event_id(done) == ids[-1]


def test_a_writer_without_a_message_owes_the_event_until_it_is_published(store: JobStore) -> None:
    bus = FlakyBus(failures=1)
    store.on_final(no_wait_publisher(bus, background=False, attempts=1, store=store))
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id, owner="o"))
    assert store.cancel(job_id)  # the API's cancel: no message in hand; the bus is down
    owed = store.get(job_id)
    assert owed is not None and owed.event_owed and bus.delivered == []
    assert [r.job_id for r in store.owed_events(time.time() + 1)] == [job_id]

    report = reconciler(store).run()  # the bus is back
    assert report.reannounced == 1
    assert [(d["job_id"], d["status"]) for d in details(bus)] == [(job_id, "cancelled")]
    settled = store.get(job_id)
    assert settled is not None and settled.event_owed is None and settled.status is JobStatus.CANCELLED
    assert store.owed_events(time.time() + 1) == []
    assert reconciler(store).run().reannounced == 0  # published once the debt is settled


def test_an_owed_event_is_cleared_only_by_its_own_publication(store: JobStore) -> None:
    """A token per write: settling an older final state's event never clears a newer one's debt."""
    job_id = new_job_id()
    store.on_final(EventPublisher("jobs", FlakyBus(failures=100), background=False, attempts=1, store=store))
    store.create(JobRecord(job_id=job_id))
    assert store.fail(job_id, "first run")
    first = store.get(job_id)
    assert first is not None and first.event_owed
    assert store.retry(job_id) and store.expire(job_id, "late")
    second = store.get(job_id)
    assert second is not None and second.event_owed and second.event_owed != first.event_owed
    assert not store.settle_event(job_id, first.event_owed)
    assert store.settle_event(job_id, second.event_owed)
    cleared = store.get(job_id)
    assert cleared is not None and cleared.event_owed is None


def test_an_event_still_owed_goes_out_before_its_job_is_retried(store: JobStore) -> None:
    bus = FlakyBus(failures=1)
    store.on_final(no_wait_publisher(bus, background=False, attempts=1, store=store))
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id))
    assert store.fail(job_id, "boom") and bus.delivered == []  # owed
    assert store.retry(job_id)  # the new run must not bury the ended run's event
    assert [d["event_id"] for d in details(bus)] == [f"{job_id}-0-0-failed"]
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.QUEUED and record.event_owed is None


def test_writes_by_a_message_holder_or_without_a_bus_owe_nothing_on_the_record(store: JobStore) -> None:
    quiet, held = new_job_id(), new_job_id()
    store.create(JobRecord(job_id=quiet))
    assert store.fail(quiet, "no bus attached: nothing is ever owed")
    store.on_final(no_wait_publisher(FlakyBus(failures=100), background=False, attempts=1, store=store))
    store.create(JobRecord(job_id=held))
    with store.message_held():
        assert store.succeed(held, RESULT)
    for job_id in (quiet, held):
        record = store.get(job_id)
        assert record is not None and record.final and record.event_owed is None
    assert store.owed_events(time.time() + 1) == []


class CountingClient:
    """The DynamoDB client, counting the calls that write."""

    WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")

    def __init__(self, real: Any) -> None:
        self.real = real
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name in self.WRITES:
            self.writes.append(name)
        return getattr(self.real, name)


def test_a_worker_s_result_costs_no_extra_write_and_a_cancel_one(aws: Settings) -> None:
    import boto3

    client = CountingClient(boto3.client("dynamodb", region_name="us-east-1"))
    store = DynamoJobStore(aws.table_name, client=client)
    bus = FlakyBus()
    store.on_final(no_wait_publisher(bus, background=False, store=store))
    done, cancelled = new_job_id(), new_job_id()
    store.create(JobRecord(job_id=done))
    with store.message_held():  # as the worker writes a result
        assert store.succeed(done, RESULT)
    assert client.writes == ["put_item", "update_item"]  # create, final: as without events
    client.writes.clear()
    store.create(JobRecord(job_id=cancelled))
    assert store.cancel(cancelled)
    assert client.writes == ["put_item", "update_item", "update_item"]  # + the outbox cleared
    assert [d["job_id"] for d in details(bus)] == [done, cancelled]


# -- through a worker: the message carries the event ---------------------------------------------


@pytest.fixture
def worker(slow_classifier: Classifier) -> Iterator[Any]:
    started: list[tuple[Worker, threading.Thread]] = []

    def start(queue: MemoryQueue, store: JobStore) -> Worker:
        made = Worker(slow_classifier, queue, store, SETTINGS, worker_id=f"w{len(started)}")
        thread = threading.Thread(target=made.run, daemon=True)
        thread.start()
        started.append((made, thread))
        return made

    yield start
    for made, thread in started:
        made.stop()
        thread.join(timeout=30)


def drained(queue: MemoryQueue, timeout: float = 40) -> bool:
    deadline = time.monotonic() + timeout
    while len(queue) and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(queue) == 0


def test_a_killed_worker_s_unpublished_event_comes_back_with_its_message(worker: Any, cat_jpeg: bytes) -> None:
    # Visibility 3 s: longer than an ack may linger (2 s), as any real visibility timeout is.
    store, queue, bus = MemoryJobStore(), MemoryQueue(visibility=3), FlakyBus()
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id))
    queue.publish(JobMessage(job_id=job_id, image=cat_jpeg))
    # A worker took the message, wrote the result and was killed before publishing or acking.
    (taken,) = queue.receive(1, 0)
    with store.message_held():
        assert store.succeed(job_id, RESULT)
    assert taken.receive_count == 1 and store.get(job_id) is not None

    store.on_final(no_wait_publisher(bus, store=store))
    worker(queue, store)  # the next worker meets the job final when the message comes back
    assert drained(queue)
    assert [d["event_id"] for d in details(bus)] == [f"{job_id}-0-0-succeeded"]
    assert queue.acked == 1 and store.final_writes[job_id] == 1


def test_a_message_is_deleted_only_once_its_event_is_out(worker: Any, cat_jpeg: bytes) -> None:
    store, queue, bus = MemoryJobStore(), MemoryQueue(visibility=3), FlakyBus(failures=1)
    store.on_final(no_wait_publisher(bus, attempts=1, store=store))
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id))
    queue.publish(JobMessage(job_id=job_id, image=cat_jpeg))
    worker(queue, store)
    assert drained(queue)
    # The first PutEvents failed: the message came back, and its redelivery published the event.
    assert len(bus.calls) >= 2 and queue.acked == 1
    assert {d["event_id"] for d in details(bus)} == {f"{job_id}-0-1-succeeded"}
    assert store.final_writes[job_id] == 1


def test_a_settled_cancel_is_not_published_again_by_the_worker_that_meets_it(worker: Any, cat_jpeg: bytes) -> None:
    store, queue, bus = MemoryJobStore(), MemoryQueue(visibility=3), FlakyBus()
    store.on_final(no_wait_publisher(bus, store=store))
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id))
    queue.publish(JobMessage(job_id=job_id, image=cat_jpeg))
    assert store.cancel(job_id)  # the API's cancel: owed on the record, published, settled
    deadline = time.monotonic() + 10
    while (record := store.get(job_id)) is not None and record.event_owed and time.monotonic() < deadline:
        time.sleep(0.01)
    worker(queue, store)
    assert drained(queue) and queue.acked == 1
    assert [d["event_id"] for d in details(bus)] == [f"{job_id}-0-0-cancelled"]

"""High-priority work: the message's fields, the two-queue source and publisher, the weighted share,
and a worker draining both queues in the order the share promises.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from twopass.config import Settings
from twopass.exceptions import ConfigError, MessageFormatError
from twopass.jobs.base import JobRecord, JobStatus, new_job_id
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.queue.base import HIGH, NORMAL, JobMessage
from twopass.queue.memory import MemoryQueue
from twopass.queue.priority import PriorityPublisher, PrioritySource
from twopass.worker.intake import Item, Pending, Share
from twopass.worker.runner import Worker

# -- the message ---------------------------------------------------------------------------------


def test_deadline_and_priority_travel_in_the_message() -> None:
    message = JobMessage(job_id="a" * 32, image=b"img", deadline_at=1_900_000_000.5, priority=HIGH)
    body = json.loads(message.encode())
    assert body["deadline_at"] == 1_900_000_000.5 and body["priority"] == "high"
    assert JobMessage.decode(message.encode()) == message


def test_messages_without_them_read_as_before() -> None:
    plain = JobMessage(job_id="b" * 32, image=b"img", submitted_at=1.0)
    body = json.loads(plain.encode())
    assert "deadline_at" not in body and "priority" not in body  # byte-for-byte what older workers read
    old = json.dumps({"v": 1, "job_id": "b" * 32, "image_b64": "aW1n", "submitted_at": 1.0, "context": {}})
    decoded = JobMessage.decode(old)
    assert decoded.deadline_at is None and decoded.priority == NORMAL
    assert not decoded.past_deadline()


def test_deadline_passes() -> None:
    message = JobMessage(job_id="c" * 32, image=b"img", deadline_at=100.0)
    assert message.past_deadline(now=100.0) and not message.past_deadline(now=99.9)


def test_an_unknown_priority_is_a_format_error() -> None:
    with pytest.raises(MessageFormatError):
        JobMessage(job_id="d" * 32, image=b"img", priority="urgent")
    body = json.dumps({"v": 1, "job_id": "d" * 32, "image_b64": "aW1n", "priority": "urgent"})
    with pytest.raises(MessageFormatError):
        JobMessage.decode(body)


# -- the share -----------------------------------------------------------------------------------


def test_share_gives_normal_work_its_share_while_both_wait() -> None:
    share = Share((HIGH, NORMAL), 0.25)
    picks = [share.choose([HIGH, NORMAL]) for _ in range(40)]
    assert picks.count(NORMAL) == 10
    assert picks[:4] == [HIGH, HIGH, HIGH, NORMAL]  # high first, and normal never waits more than 3 takes
    assert all(NORMAL in picks[i : i + 4] for i in range(0, 40, 4))


def test_share_owes_nothing_while_one_lane_is_empty() -> None:
    share = Share((HIGH, NORMAL), 0.25)
    assert [share.choose([HIGH]) for _ in range(10)] == [HIGH] * 10
    assert [share.choose([NORMAL]) for _ in range(3)] == [NORMAL] * 3
    # No credit was saved up meanwhile: with both waiting again, high goes first.
    assert [share.choose([HIGH, NORMAL]) for _ in range(4)] == [HIGH, HIGH, HIGH, NORMAL]


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, 2.0])
def test_share_must_lie_strictly_between_0_and_1(value: float) -> None:
    with pytest.raises(ConfigError, match="TWOPASS_NORMAL_SHARE"):
        Share((HIGH, NORMAL), value)


def _item(name: str) -> Item:
    from concurrent.futures import Future

    from twopass.queue.base import Delivery

    return Item(Delivery(name, name, 1, JobMessage(job_id=new_job_id(), image=b"x")), Future())


def test_pending_lanes_are_bounded_and_taken_by_share() -> None:
    pending = Pending((HIGH, NORMAL), capacity=2, share=Share((HIGH, NORMAL), 0.5))
    assert pending.put(NORMAL, _item("n1"), 0) and pending.put(NORMAL, _item("n2"), 0)
    assert not pending.put(NORMAL, _item("n3"), 0.01)  # full: the receiver waits
    assert pending.put(HIGH, _item("h1"), 0) and pending.put(HIGH, _item("h2"), 0)
    taken = [pending.take() for _ in range(4)]
    assert [i.delivery.message_id for i in taken if i is not None] == ["h1", "n1", "h2", "n2"]
    assert pending.take(timeout=0.01) is None and len(pending) == 0


def test_a_waiting_take_wakes_when_work_arrives() -> None:
    pending = Pending((HIGH, NORMAL), capacity=4, share=Share((HIGH, NORMAL), 0.25))
    threading.Timer(0.05, lambda: pending.put(HIGH, _item("late"), 0)).start()
    item = pending.take(timeout=5)
    assert item is not None and item.delivery.message_id == "late"


# -- the two-queue source and publisher ----------------------------------------------------------


def test_priority_source_routes_acks_and_leases_to_the_queue_a_message_came_from() -> None:
    high, normal = MemoryQueue(max_receive_count=3, name="h"), MemoryQueue(max_receive_count=5, name="n")
    source = PrioritySource(high, normal)
    assert source.lanes() == (HIGH, NORMAL) and source.max_receive_count == 3
    high.publish(JobMessage(job_id="1" * 32, image=b"h"))
    normal.publish(JobMessage(job_id="2" * 32, image=b"n"))
    (h,) = source.receive_lane(HIGH, 10, 0)
    (n,) = source.receive_lane(NORMAL, 10, 0)
    assert (h.lane, n.lane) == (HIGH, NORMAL) and h.key != n.key
    source.extend([h, n], 30)
    source.ack([n])
    assert (high.acked, normal.acked) == (0, 1)
    source.release([h])
    assert len(high) == 1 and len(normal) == 0
    (again,) = source.receive_lane(HIGH, 10, 0)
    assert again.receive_count == 2 and not source.last_attempt(again)
    source.release([again])
    (third,) = source.receive_lane(HIGH, 10, 0)
    assert source.last_attempt(third)  # the high queue's own redrive limit, not the normal one's


def test_priority_source_receive_takes_high_priority_messages_first() -> None:
    high, normal = MemoryQueue(name="h"), MemoryQueue(name="n")
    source = PrioritySource(high, normal)
    for i in range(3):
        normal.publish(JobMessage(job_id=f"{i:032x}", image=b"n"))
    high.publish(JobMessage(job_id="f" * 32, image=b"h"))
    got = source.receive(2, 0)
    assert [d.lane for d in got] == [HIGH, NORMAL]


def test_priority_publisher_sends_each_job_to_its_queue_and_counts_both_backlogs() -> None:
    high, normal = MemoryQueue(name="h"), MemoryQueue(name="n")
    publisher = PriorityPublisher(high, normal)
    publisher.publish(JobMessage(job_id="1" * 32, image=b"h", priority=HIGH))
    publisher.publish(JobMessage(job_id="2" * 32, image=b"n"))
    publisher.publish(JobMessage(job_id="3" * 32, image=b"n", priority=NORMAL))
    assert (len(high), len(normal)) == (1, 2)
    high.receive(1, 0)
    assert publisher.ping() == {"visible": 2, "in_flight": 1}


# -- a worker on both queues ---------------------------------------------------------------------


@pytest.fixture
def workers() -> Iterator[list[tuple[Worker, threading.Thread]]]:
    running: list[tuple[Worker, threading.Thread]] = []
    yield running
    for worker, thread in running:
        worker.stop()
        thread.join(timeout=30)


def test_worker_takes_high_priority_work_first_and_normal_work_still_progresses(
    slow_classifier: Classifier, cat_jpeg: bytes, workers: list[tuple[Worker, threading.Thread]]
) -> None:
    high, normal = MemoryQueue(visibility=60, name="h"), MemoryQueue(visibility=60, name="n")
    store = MemoryJobStore()

    def submit(queue: MemoryQueue, priority: str) -> str:
        job_id = new_job_id()
        store.create(JobRecord(job_id=job_id, priority=priority))
        queue.publish(JobMessage(job_id=job_id, image=cat_jpeg, priority=priority))
        return job_id

    # The normal backlog was there first: without priorities every high-priority job would wait behind it.
    normal_ids = [submit(normal, NORMAL) for _ in range(60)]
    high_ids = [submit(high, HIGH) for _ in range(16)]
    settings = Settings().replace(
        max_batch_size=4, max_wait_ms=20, receivers=1, poll_wait_seconds=0.2, heartbeat_seconds=0.5, normal_share=0.25
    )
    worker = Worker(slow_classifier, PrioritySource(high, normal), store, settings, worker_id="prio")
    thread = threading.Thread(target=worker.run, daemon=True)
    workers.append((worker, thread))
    thread.start()

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all((r := store.get(j)) is not None and r.final for j in high_ids):
            break
        time.sleep(0.02)
    highs = [store.get(j) for j in high_ids]
    assert all(r is not None and r.status is JobStatus.SUCCEEDED for r in highs), "high-priority jobs finished"
    normals = [store.get(j) for j in normal_ids]
    done_normal = [r for r in normals if r is not None and r.status is JobStatus.SUCCEEDED]
    # 16 high-priority jobs at three in four takes: about 5 normal ones alongside (a batch or so of
    # slack for which receiver handed over first), never the 60 a FIFO queue would have run first.
    assert 1 <= len(done_normal) <= 12, len(done_normal)
    worker.stop()
    thread.join(timeout=30)
    assert high.acked == 16


def test_the_reconciler_republishes_a_lost_high_priority_job_to_its_own_queue() -> None:
    from twopass.worker.chores.reconcile import Reconciler

    store = MemoryJobStore()
    high, normal = MemoryQueue(name="h"), MemoryQueue(name="n")
    deadline = time.time() + 600
    orphan = JobRecord(
        job_id=new_job_id(), image_ref="s3://b/payloads/x", priority=HIGH, deadline_at=deadline, created_at=1.0
    )
    store.create(orphan)
    reconciler = Reconciler(store, PriorityPublisher(high, normal), after_seconds=60, retention_seconds=10**10)
    reconciler.run()  # both queues empty once: not yet certain
    assert reconciler.run().republished == 1  # empty twice in a row: the message is certainly lost
    (delivery,) = high.receive(10, 0)
    assert delivery.message.priority == HIGH and delivery.message.deadline_at == deadline
    assert len(normal) == 0


def test_a_high_priority_job_arriving_mid_batch_makes_the_very_next_batch(
    slow_classifier: Classifier, cat_jpeg: bytes, workers: list[tuple[Worker, threading.Thread]]
) -> None:
    """The batch behind the one on the model is formed only as that one ends, not when it starts: a job
    arriving meanwhile waits for the batch on the model and its own, not for a third formed before it."""
    batch_seconds = 1.5
    (prediction,) = slow_classifier.predict_batch([slow_classifier.tensor(cat_jpeg, max_pixels=40_000_000)])
    model = copy.copy(slow_classifier)

    def slow_model(tensors: list[Any]) -> list[Any]:
        time.sleep(batch_seconds)  # a model that takes a fixed time per batch, whatever else runs
        return [prediction] * len(tensors)

    model.predict_batch = slow_model  # type: ignore[method-assign]
    high, normal = MemoryQueue(visibility=60, name="h"), MemoryQueue(visibility=60, name="n")
    store = MemoryJobStore()

    def submit(queue: MemoryQueue, priority: str) -> str:
        job_id = new_job_id()
        store.create(JobRecord(job_id=job_id, priority=priority))
        queue.publish(JobMessage(job_id=job_id, image=cat_jpeg, priority=priority))
        return job_id

    for _ in range(40):
        submit(normal, NORMAL)
    settings = Settings().replace(max_batch_size=4, max_wait_ms=5, receivers=1, poll_wait_seconds=0.2)
    worker = Worker(model, PrioritySource(high, normal), store, settings, worker_id="late-forming")
    thread = threading.Thread(target=worker.run, daemon=True)
    workers.append((worker, thread))
    thread.start()
    deadline = time.monotonic() + 60
    while worker.stats.batches < 3:  # past the first batches, whose time was not known yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.4)  # well into the batch on the model
    posted = time.monotonic()
    urgent = submit(high, HIGH)
    while (record := store.get(urgent)) is None or not record.final:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    waited = time.monotonic() - posted
    # About 1.1 s left of the batch on the model, then its own 1.5 s; a batch formed in advance would add 1.5 s.
    assert waited < 2 * batch_seconds + 0.4, waited

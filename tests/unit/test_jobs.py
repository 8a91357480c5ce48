"""Both job stores obey the same lifecycle: conditional transitions, one final write, TTL on read."""

from __future__ import annotations

import time

import pytest

from twopass.config import Settings
from twopass.jobs.base import JobRecord, JobStatus, JobStore, is_job_id, new_job_id
from twopass.jobs.dynamodb import DynamoJobStore

RESULT = {"model": "m", "label": "tabby", "top_k": [{"label": "tabby", "probability": 0.75, "class_id": 281}]}


def created(store: JobStore) -> str:
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id))
    return job_id


def test_job_ids_are_uuid4_hex_with_122_random_bits() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_job_id(i) and i[12] == "4" for i in ids)  # version nibble of a UUID4
    assert not is_job_id("#workers")
    assert not is_job_id("../etc/passwd")


def test_create_then_read(store: JobStore) -> None:
    job_id = created(store)
    record = store.get(job_id)
    assert record is not None
    assert record.status is JobStatus.QUEUED
    assert record.expires_at is not None and record.expires_at > time.time()
    assert store.get(new_job_id()) is None


def test_create_twice_is_refused(store: JobStore) -> None:
    job_id = created(store)
    with pytest.raises(Exception):  # noqa: B017 - each backend has its own error type
        store.create(JobRecord(job_id=job_id))


def test_full_lifecycle(store: JobStore) -> None:
    job_id = created(store)
    running = store.start(job_id, "w1")
    assert running is not None and running.status is JobStatus.RUNNING and running.attempts == 1
    assert store.succeed(job_id, RESULT)
    record = store.get(job_id)
    assert record is not None
    assert record.status is JobStatus.SUCCEEDED
    assert record.result == RESULT
    assert record.finished_at is not None and record.started_at is not None


def test_redelivery_after_crash_restarts_and_counts_attempts(store: JobStore) -> None:
    job_id = created(store)
    store.start(job_id, "w1")
    again = store.start(job_id, "w2")
    assert again is not None and again.attempts == 2 and again.worker == "w2"


def test_final_state_is_written_once(store: JobStore) -> None:
    job_id = created(store)
    store.start(job_id, "w1")
    assert store.succeed(job_id, RESULT)
    assert not store.succeed(job_id, {**RESULT, "label": "other"})
    assert not store.fail(job_id, "late failure")
    assert store.start(job_id, "w3") is None
    record = store.get(job_id)
    assert record is not None and record.result == RESULT and record.error is None


def test_fail_only_if_queued_does_not_touch_a_running_job(store: JobStore) -> None:
    job_id = created(store)
    store.start(job_id, "w1")
    assert not store.fail(job_id, "enqueue failed", only_if_queued=True)
    assert store.fail(job_id, "model exploded")
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.FAILED and record.error == "model exploded"


def test_unknown_job_transitions_are_refused(store: JobStore) -> None:
    unknown = new_job_id()
    assert store.start(unknown, "w") is None
    assert not store.succeed(unknown, RESULT)
    assert not store.fail(unknown, "x")


def test_expired_records_read_as_gone(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id, expires_at=int(time.time()) - 1))
    assert store.get(job_id) is None


def test_heartbeats(store: JobStore) -> None:
    store.beat("a", {"pid": 1, "model": "slow"})
    store.beat("b", {"pid": 2})
    store.beat("a", {"pid": 1, "processed": 3})
    beats = {b.worker_id: b for b in store.workers()}
    assert set(beats) == {"a", "b"}
    assert beats["a"].info["processed"] == 3
    assert beats["a"].age() < 5
    store.forget_worker("b")
    assert [b.worker_id for b in store.workers()] == ["a"]


def test_float_results_round_trip_through_dynamodb(aws: Settings) -> None:
    store = DynamoJobStore(aws.table_name)
    job_id = created(store)
    result: dict[str, object] = {
        "model": "m",
        "label": "x",
        "top_k": [{"label": "x", "probability": 0.123456, "class_id": 7}],
    }
    assert store.succeed(job_id, result)
    record = store.get(job_id)
    assert record is not None and record.result == result

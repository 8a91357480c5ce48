"""Job control in both job stores and in the API (in-process): cancel, expire, retry, list, deadlines."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest

from twopass.config import Settings
from twopass.jobs.base import (
    InvalidCursorError,
    JobRecord,
    JobStatus,
    JobStore,
    decode_cursor,
    encode_cursor,
    new_job_id,
)
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.jobs.memory import MemoryJobStore

RESULT = {"model": "m", "label": "tabby", "top_k": [{"label": "tabby", "probability": 0.75, "class_id": 281}]}


@pytest.fixture(params=["dynamodb", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    if request.param == "memory":
        yield MemoryJobStore()
    else:
        settings: Settings = request.getfixturevalue("aws")
        yield DynamoJobStore(settings.table_name)


def created(store: JobStore, owner: str = "o", **fields: object) -> str:
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id, owner=owner, **fields))  # type: ignore[arg-type]
    return job_id


def status(store: JobStore, job_id: str) -> JobStatus:
    record = store.get(job_id)
    assert record is not None
    return record.status


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_a_queued_job_then_no_worker_starts_it(store: JobStore) -> None:
    job_id = created(store)
    assert store.cancel(job_id)
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.CANCELLED and record.final
    assert record.finished_at is not None
    assert store.start(job_id, "w1") is None
    assert not store.cancel(job_id), "a final job is not cancelled twice"


def test_cancel_a_running_job_refuses_its_late_result(store: JobStore) -> None:
    job_id = created(store)
    assert store.start(job_id, "w1") is not None
    assert store.cancel(job_id)
    assert not store.succeed(job_id, RESULT)
    assert not store.fail(job_id, "boom")
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.CANCELLED and record.result is None


def test_a_finished_job_cannot_be_cancelled(store: JobStore) -> None:
    job_id = created(store)
    assert store.succeed(job_id, RESULT)
    assert not store.cancel(job_id)
    assert status(store, job_id) is JobStatus.SUCCEEDED
    assert not store.cancel(new_job_id()), "unknown"


# -- deadlines -------------------------------------------------------------------------------------


def test_start_refuses_a_queued_job_past_its_deadline_then_expire(store: JobStore) -> None:
    late = created(store, deadline_at=time.time() - 1)
    in_time = created(store, deadline_at=time.time() + 60)
    assert store.start(late, "w1") is None
    assert status(store, late) is JobStatus.QUEUED
    assert store.expire(late, "not started within its deadline")
    record = store.get(late)
    assert (
        record is not None and record.status is JobStatus.EXPIRED and record.error == "not started within its deadline"
    )
    assert not store.expire(late, "again")
    started = store.start(in_time, "w1")
    assert started is not None and started.deadline_at is not None
    assert not store.expire(in_time, "a running job does not expire")


def test_a_redelivered_running_job_restarts_even_past_its_deadline(store: JobStore) -> None:
    job_id = created(store, deadline_at=time.time() + 0.5)
    assert store.start(job_id, "w1") is not None
    time.sleep(0.6)
    again = store.start(job_id, "w2")
    assert again is not None and again.attempts == 2


# -- retry -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["failed", "expired", "cancelled"])
def test_retry_requeues_under_the_same_id_keeping_attempts_and_history(store: JobStore, end: str) -> None:
    job_id = created(store, deadline_at=time.time() + 60)
    if end == "failed":
        assert store.start(job_id, "w1") is not None
        assert store.fail(job_id, "decoder exploded")
    elif end == "expired":
        assert store.expire(job_id, "too late")
    else:
        assert store.cancel(job_id)
    assert store.retry(job_id)
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.QUEUED
    assert record.error is None and record.finished_at is None and record.deadline_at is None
    assert [h["status"] for h in record.history] == [end]
    assert record.history[0]["retried_at"] >= record.created_at
    attempts = record.attempts
    assert not store.retry(job_id), "a queued job is not retried"
    running = store.start(job_id, "w2")
    assert running is not None and running.attempts == attempts + 1
    assert store.fail(job_id, "twice")
    assert store.retry(job_id)
    again = store.get(job_id)
    assert again is not None and [h["status"] for h in again.history] == [end, "failed"]
    assert again.history[1]["error"] == "twice" and again.history[1]["attempts"] == attempts + 1
    assert store.succeed(job_id, RESULT)
    assert not store.retry(job_id), "a success is never rerun"


def test_retry_refuses_open_and_unknown_jobs(store: JobStore) -> None:
    job_id = created(store)
    assert not store.retry(job_id)
    store.start(job_id, "w1")
    assert not store.retry(job_id)
    assert not store.retry(new_job_id())


# -- listing ---------------------------------------------------------------------------------------


def test_list_pages_newest_first_across_pages_for_the_owner_only(store: JobStore) -> None:
    mine = []
    for _ in range(7):
        mine.append(created(store, owner="alice"))
        time.sleep(0.002)  # distinct creation times, so newest-first is one order
    theirs = created(store, owner="bob")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = store.list_jobs("alice", limit=3, cursor=cursor)
        pages += 1
        assert len(page) <= 3
        seen.extend(r.job_id for r in page)
        if cursor is None:
            break
    assert seen == list(reversed(mine))
    assert pages == 3
    assert theirs not in seen
    bob, end = store.list_jobs("bob")
    assert [r.job_id for r in bob] == [theirs] and end is None
    assert store.list_jobs("nobody") == ([], None)


def test_list_with_a_status_filter_fills_pages_across_skipped_jobs(store: JobStore) -> None:
    ids = []
    for i in range(9):
        job_id = created(store, owner="alice")
        if i % 3 == 0:
            store.cancel(job_id)
        ids.append(job_id)
        time.sleep(0.002)
    cancelled = [j for i, j in enumerate(ids) if i % 3 == 0][::-1]
    page, cursor = store.list_jobs("alice", status=JobStatus.CANCELLED, limit=2)
    assert [r.job_id for r in page] == cancelled[:2] and cursor is not None
    rest, end = store.list_jobs("alice", status=JobStatus.CANCELLED, limit=2, cursor=cursor)
    assert [r.job_id for r in rest] == cancelled[2:] and end is None
    queued, _ = store.list_jobs("alice", status=JobStatus.QUEUED, limit=100)
    assert len(queued) == 6 and all(r.status is JobStatus.QUEUED for r in queued)


def test_list_refuses_bad_cursors_and_page_sizes(store: JobStore) -> None:
    created(store, owner="alice")
    garbage = [
        "not base64 at all!",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(json.dumps({"t": "1", "j": "../etc"}).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps({"t": "NaN", "j": new_job_id()}).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps({"t": "1", "j": new_job_id(), "owner": "bob"}).encode()).decode(),
        "",
    ]
    for cursor in garbage:
        with pytest.raises(InvalidCursorError):
            store.list_jobs("alice", cursor=cursor)
    for limit in (0, 101):
        with pytest.raises(Exception, match="limit"):
            store.list_jobs("alice", limit=limit)


def test_cursor_round_trip() -> None:
    job_id = new_job_id()
    assert decode_cursor(encode_cursor("1700000000.25", job_id)) == ("1700000000.25", job_id)


def test_records_keep_priority_deadline_and_history(store: JobStore) -> None:
    deadline = time.time() + 30
    job_id = created(store, priority="high", deadline_at=deadline)
    record = store.get(job_id)
    assert record is not None
    assert record.priority == "high" and record.deadline_at == pytest.approx(deadline) and record.history == []
    plain = store.get(created(store))
    assert plain is not None and plain.priority == "normal" and plain.deadline_at is None

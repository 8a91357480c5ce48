"""Job control in both job stores and in the API (in-process): cancel, expire, retry, list, deadlines."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import datetime

import boto3
import pytest
from fastapi.testclient import TestClient

from bench.counting import CallCounter
from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.api.usecases.control import BacklogGauge
from twopass.config import Settings
from twopass.exceptions import DependencyError
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
from twopass.models.runtime import Classifier
from twopass.payloads import PayloadStore
from twopass.queue.sqs import SqsPublisher

RESULT = {"model": "m", "label": "tabby", "top_k": [{"label": "tabby", "probability": 0.75, "class_id": 281}]}


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
    deadline = time.time() + 2  # room for a slow emulator between the create and the start
    job_id = created(store, deadline_at=deadline)
    assert store.start(job_id, "w1") is not None
    time.sleep(max(0.0, deadline - time.time()) + 0.1)
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


# -- the API, in process over the template's resources in moto ------------------------------------

KEY_A, KEY_B = {"x-api-key": "key-a"}, {"x-api-key": "key-b"}


def api(settings: Settings, classifier: Classifier, **changes: object) -> TestClient:
    settings = settings.replace(api_keys="key-a,key-b", **changes)
    high = settings.high_priority_queue_url
    service = TwopassService(
        settings,
        DynamoJobStore(settings.table_name),
        SqsPublisher(settings.queue_url),
        classifier=classifier,
        high_priority_publisher=SqsPublisher(high) if high else None,
    )
    return TestClient(create_app(service, emit_metrics=False), raise_server_exceptions=False)


@pytest.fixture
def client(aws: Settings, fast_classifier: Classifier) -> Iterator[TestClient]:
    with api(aws, fast_classifier) as c:
        yield c


def messages(queue_url: str) -> list[dict[str, object]]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    out = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0)
    return [json.loads(m["Body"]) for m in out.get("Messages", [])]


def queued_job(client: TestClient, headers: dict[str, str] = KEY_A, **params: object) -> str:
    response = client.get("/predict/test", headers=headers, params=params)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def test_delete_cancels_a_queued_job_once_and_only_for_its_owner(client: TestClient, aws: Settings) -> None:
    job_id = queued_job(client)
    assert client.delete(f"/job/{job_id}", headers=KEY_B).status_code == 404
    response = client.delete(f"/job/{job_id}", headers=KEY_A)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled" and body["finished_at"] and body[job_id] == {"prediction": None}
    assert client.get(f"/job/{job_id}", headers=KEY_A).json()["status"] == "cancelled"
    again = client.delete(f"/job/{job_id}", headers=KEY_A)
    assert again.status_code == 409 and again.json()["error"] == "job_final"
    assert "retry-after" not in again.headers, "asking again will not help"
    assert client.delete(f"/job/{new_job_id()}", headers=KEY_A).status_code == 404
    assert client.delete("/job/not-a-job", headers=KEY_A).json()["error"] == "not_found"
    # A job that already ended is final too.
    done = queued_job(client)
    DynamoJobStore(aws.table_name).succeed(done, RESULT)
    assert client.delete(f"/job/{done}", headers=KEY_A).json()["error"] == "job_final"


def test_list_pages_filters_and_keeps_owners_apart(client: TestClient) -> None:
    mine = [queued_job(client) for _ in range(5)]
    theirs = queued_job(client, KEY_B)
    assert client.delete(f"/job/{mine[1]}", headers=KEY_A).status_code == 200
    seen, cursor, pages = [], None, 0
    while True:
        params: dict[str, object] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = client.get("/jobs", headers=KEY_A, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"jobs", "next_cursor"} and len(page["jobs"]) <= 2
        seen += [job["job_id"] for job in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == mine[::-1] and pages == 3
    first = client.get("/jobs", headers=KEY_A).json()["jobs"][0]
    assert first == client.get(f"/job/{mine[-1]}", headers=KEY_A).json(), "a list shows job bodies"
    cancelled = client.get("/jobs", headers=KEY_A, params={"status": "cancelled"}).json()
    assert [j["job_id"] for j in cancelled["jobs"]] == [mine[1]] and cancelled["next_cursor"] is None
    assert [j["job_id"] for j in client.get("/jobs", headers=KEY_B).json()["jobs"]] == [theirs]
    bad = client.get("/jobs", headers=KEY_A, params={"cursor": "bm90IGEgY3Vyc29y"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_cursor"
    for params in ({"limit": 0}, {"limit": 101}, {"status": "lost"}):
        refused = client.get("/jobs", headers=KEY_A, params=params)
        assert refused.status_code == 422 and refused.json()["error"] == "validation_error"


def test_retry_requeues_a_failed_claim_checked_job_until_its_image_is_gone(
    aws: Settings, fast_classifier: Classifier
) -> None:
    store = DynamoJobStore(aws.table_name)
    with api(aws, fast_classifier, inline_image_bytes=1) as client:
        job_id = queued_job(client)
        messages(aws.queue_url)  # the first publish
        refused = client.post(f"/job/{job_id}/retry", headers=KEY_A)
        assert refused.status_code == 409 and refused.json()["error"] == "job_not_retryable"
        assert store.start(job_id, "w1") is not None and store.fail(job_id, "the GPU caught fire")
        assert client.post(f"/job/{job_id}/retry", headers=KEY_B).status_code == 404
        response = client.post(f"/job/{job_id}/retry", headers=KEY_A)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["job_id"] == job_id and body["status"] == "queued" and body["attempts"] == 1
        assert body["error"] is None and body["history"][0]["status"] == "failed"
        assert body["history"][0]["error"] == "the GPU caught fire"
        sent = [m for m in messages(aws.queue_url) if m["job_id"] == job_id]
        assert len(sent) == 2 and all(m["image_ref"] for m in sent), "published again, by its claim check"
        store.fail(job_id, "again")
        record = store.get(job_id)
        assert record is not None and record.image_ref
        bucket, key = record.image_ref.removeprefix("s3://").split("/", 1)
        boto3.client("s3", region_name="us-east-1").delete_object(Bucket=bucket, Key=key)
        gone = client.post(f"/job/{job_id}/retry", headers=KEY_A)
        assert gone.status_code == 410 and gone.json()["error"] == "image_gone"
    with api(aws, fast_classifier) as client:
        inline = queued_job(client)  # travelled inside its message: nothing kept to run again
        store.fail(inline, "boom")
        assert client.post(f"/job/{inline}/retry", headers=KEY_A).json()["error"] == "image_gone"


def test_retry_right_after_a_cancel_waits_for_the_worker_to_keep_the_inline_image(
    client: TestClient, aws: Settings
) -> None:
    store = DynamoJobStore(aws.table_name)
    job_id = queued_job(client)  # its image travels inside its message
    assert client.delete(f"/job/{job_id}", headers=KEY_A).status_code == 200
    pending = client.post(f"/job/{job_id}/retry", headers=KEY_A)
    assert pending.status_code == 409 and pending.json()["error"] == "image_pending", pending.text
    assert pending.headers["retry-after"] == "1" and "retry in 1 s" in pending.json()["detail"]
    assert status(store, job_id) is JobStatus.CANCELLED, "refused: nothing changed"
    # What a worker does when it meets the cancelled job's message: keeps the image, records it.
    [message] = [m for m in messages(aws.queue_url) if m["job_id"] == job_id]
    ref = PayloadStore().put(aws.payload_bucket, job_id, base64.b64decode(str(message["image_b64"])))
    assert store.keep_image(job_id, ref)
    retried = client.post(f"/job/{job_id}/retry", headers=KEY_A)
    assert retried.status_code == 200 and retried.json()["status"] == "queued", retried.text


def test_retry_of_a_cancelled_inline_job_is_410_where_no_worker_will_keep_its_image(
    aws: Settings, fast_classifier: Classifier
) -> None:
    with api(aws, fast_classifier, payload_bucket="") as client:  # no bucket: nothing is ever kept
        job_id = queued_job(client)
        assert client.delete(f"/job/{job_id}", headers=KEY_A).status_code == 200
        assert client.post(f"/job/{job_id}/retry", headers=KEY_A).json()["error"] == "image_gone"
    with api(aws, fast_classifier, queue_retention_seconds=1) as client:  # its message is past the queue's retention
        job_id = queued_job(client)
        assert client.delete(f"/job/{job_id}", headers=KEY_A).status_code == 200
        time.sleep(1.1)
        gone = client.post(f"/job/{job_id}/retry", headers=KEY_A)
        assert gone.status_code == 410 and gone.json()["error"] == "image_gone"


def test_retry_refuses_an_image_replaced_by_one_over_the_limit_without_reading_it(
    aws: Settings, fast_classifier: Classifier
) -> None:
    store = DynamoJobStore(aws.table_name)
    s3 = boto3.client("s3", region_name="us-east-1")
    with api(aws, fast_classifier, inline_image_bytes=1, upload_max_bytes=1000, max_image_bytes=300_000) as client:
        job_id = queued_job(client)  # claim-checked at payloads/<job id>
        assert store.start(job_id, "w1") is not None and store.fail(job_id, "boom")
        s3.put_object(Bucket=aws.payload_bucket, Key=f"payloads/{job_id}", Body=b"0" * 300_001)
        refused = client.post(f"/job/{job_id}/retry", headers=KEY_A)
        assert refused.status_code == 413 and refused.json()["error"] == "payload_too_large", refused.text
        assert "300001 bytes" in refused.json()["detail"] and status(store, job_id) is JobStatus.FAILED
        s3.put_object(Bucket=aws.payload_bucket, Key=f"payloads/{job_id}", Body=b"0" * 300_000)
        assert client.post(f"/job/{job_id}/retry", headers=KEY_A).status_code == 200


def test_deadline_from_json_query_or_default_within_the_queue_retention(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    with api(aws, fast_classifier, queue_retention_seconds=3600) as client:
        before = time.time()
        posted = client.post("/predict", headers=KEY_A, json={"image_data": b64(cat_jpeg), "deadline_seconds": 30})
        assert posted.status_code == 200, posted.text
        job = client.get(f"/job/{posted.json()['job_id']}", headers=KEY_A).json()
        deadline = datetime.fromisoformat(job["deadline_at"]).timestamp()
        assert before + 29 < deadline < time.time() + 31
        raw = client.post(
            "/predict",
            headers={**KEY_A, "content-type": "image/jpeg"},
            content=cat_jpeg,
            params={"deadline_seconds": 5},
        )
        assert raw.status_code == 200
        message = next(m for m in messages(aws.queue_url) if m["job_id"] == raw.json()["job_id"])
        assert isinstance(message["deadline_at"], float) and message["deadline_at"] < time.time() + 6
        for seconds in (0, 0.5, 3601, -1, True, "30"):
            refused = client.post(
                "/predict", headers=KEY_A, json={"image_data": b64(cat_jpeg), "deadline_seconds": seconds}
            )
            assert refused.status_code == 422 and refused.json()["error"] == "validation_error", seconds
        assert client.get("/predict/test", headers=KEY_A, params={"deadline_seconds": "soon"}).status_code == 422
        plain = client.get(f"/job/{queued_job(client)}", headers=KEY_A).json()
        assert plain["deadline_at"] is None, "off by default"
    with api(aws, fast_classifier, default_deadline_seconds=60) as client:
        job = client.get(f"/job/{queued_job(client)}", headers=KEY_A).json()
        assert datetime.fromisoformat(job["deadline_at"]).timestamp() == pytest.approx(time.time() + 60, abs=5)


def test_priority_high_goes_to_its_own_queue_where_there_is_one(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    with api(aws, fast_classifier, high_priority_queue_url="") as client:
        job = client.get(f"/job/{queued_job(client, priority='high')}", headers=KEY_A).json()
        assert job["priority"] == "normal", "no high-priority queue: queued normally, and the body says so"
    high_url = boto3.client("sqs", region_name="us-east-1").create_queue(QueueName="high-test")["QueueUrl"]
    with api(aws, fast_classifier, high_priority_queue_url=high_url) as client:
        urgent = queued_job(client, priority="high")
        body = client.post("/predict", headers=KEY_A, json={"image_data": b64(cat_jpeg), "priority": "high"}).json()
        normal = queued_job(client)
        assert client.get(f"/job/{urgent}", headers=KEY_A).json()["priority"] == "high"
        high_ids = {m["job_id"] for m in messages(high_url)}
        assert high_ids == {urgent, body["job_id"]}
        assert normal not in high_ids and normal in {m["job_id"] for m in messages(aws.queue_url)}
        assert client.get("/predict/test", headers=KEY_A, params={"priority": "urgent"}).status_code == 422


def test_overload_sheds_with_the_fast_answer_or_rejects_with_429(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    with api(aws, fast_classifier, max_backlog=3, backlog_cache_seconds=60) as client:
        accepted = client.get("/predict/test", headers=KEY_A).json()
        assert accepted["status"] == "queued"
        for i in range(3):
            sqs.send_message(QueueUrl=aws.queue_url, MessageBody=f"filler {i}")
        # The depth read for the first request is reused for a minute: still accepted.
        assert client.get("/predict/test", headers=KEY_A).json()["status"] == "queued"
        gauge = client.app.state.twopass.backlog  # type: ignore[attr-defined]
        assert gauge.reads == 1
        gauge.ttl = 0.0  # as if the minute had passed
        shed = client.post("/predict", headers=KEY_A, json={"image_data": b64(cat_jpeg)})
        assert shed.status_code == 200
        body = shed.json()
        assert body["job_id"] is None and body["status"] == "shed" and "status_url" not in body
        assert body["efficientnet-lite0"] == body["fast"]["label"] and body["fast"]["top_k"]
        rejected = client.post("/predict", headers=KEY_A, json={"image_data": b64(cat_jpeg), "on_overload": "reject"})
        assert rejected.status_code == 429 and rejected.json()["error"] == "overloaded"
        assert int(rejected.headers["retry-after"]) >= 1
        raw = client.post(
            "/predict",
            headers={**KEY_A, "content-type": "image/jpeg"},
            content=cat_jpeg,
            params={"on_overload": "reject"},
        )
        assert raw.status_code == 429
        jobs = client.get("/jobs", headers=KEY_A, params={"limit": 100}).json()["jobs"]
        assert len(jobs) == 2, "shed and rejected requests create no job"


def test_backlog_gauge_reads_once_per_ttl_and_fails_open() -> None:
    now = [0.0]
    calls: list[int] = []

    def read() -> int:
        calls.append(1)
        if len(calls) == 2:
            raise DependencyError("queue attributes failed (Throttling)")
        return 7

    gauge = BacklogGauge(read, ttl=5.0, clock=lambda: now[0])
    assert gauge.refresh() == 7 and gauge.fresh
    assert [gauge.refresh() for _ in range(50)] == [7] * 50 and len(calls) == 1
    now[0] = 5.0
    assert not gauge.fresh and gauge.refresh() is None, "unknown, so nothing is shed on it"
    assert gauge.refresh() is None and len(calls) == 2, "a failing queue is not asked once per request"
    now[0] = 10.0
    assert gauge.refresh() == 7


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_backlog_limit_costs_one_depth_read_per_cache_period_not_one_per_request(
    aws: Settings, fast_classifier: Classifier
) -> None:
    high_url = boto3.client("sqs", region_name="us-east-1").create_queue(QueueName="high-count")["QueueUrl"]
    with (
        api(
            aws, fast_classifier, max_backlog=1000, backlog_cache_seconds=60, high_priority_queue_url=high_url
        ) as client,
        CallCounter.everywhere() as counter,
    ):
        for _ in range(20):
            assert client.get("/predict/test", headers=KEY_A).json()["status"] == "queued"
    calls = counter.snapshot()
    assert calls[("SQS", "GetQueueAttributes")] == 2, "one read of each queue for all twenty requests"
    assert calls[("SQS", "SendMessage")] == 20

"""No accepted job lost, none run twice by mistake: idempotency, claim checks, dead letters, redrive."""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import CAT_LABELS
from twopass import payloads
from twopass.api.app import create_app
from twopass.api.services.service import SQS_INLINE_LIMIT, TwopassService
from twopass.config import Settings
from twopass.jobs.base import JobRecord, JobStatus, new_job_id
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.models.runtime import Classifier
from twopass.queue.base import JobMessage
from twopass.queue.sqs import SqsPublisher, SqsSource
from twopass.tools.redrive import dead_letter_queue_url, redrive
from twopass.worker.chores.deadletter import sweep
from twopass.worker.runner import Worker


def sqs() -> Any:
    return boto3.client("sqs", region_name="us-east-1")


def client_for(settings: Settings, classifier: Classifier) -> TestClient:
    service = TwopassService(
        settings, DynamoJobStore(settings.table_name), SqsPublisher(settings.queue_url), classifier
    )
    return TestClient(create_app(service), raise_server_exceptions=False)


def messages(queue_url: str) -> list[dict[str, Any]]:
    out = sqs().receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=0)
    return out.get("Messages", [])  # type: ignore[no-any-return]


# -- Idempotency-Key ----------------------------------------------------------------------------


def test_same_idempotency_key_returns_the_same_job(aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes) -> None:
    with client_for(aws, fast_classifier) as c:
        headers = {"Idempotency-Key": "order-42", "Content-Type": "image/jpeg"}
        first = c.post("/predict", content=cat_jpeg, headers=headers)
        second = c.post("/predict", content=cat_jpeg, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert len(messages(aws.queue_url)) == 1  # one job, one message


def test_idempotency_key_reused_with_another_image_is_422(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes, photo: Any
) -> None:
    with client_for(aws, fast_classifier) as c:
        c.post("/predict", content=cat_jpeg, headers={"Idempotency-Key": "k", "Content-Type": "image/jpeg"})
        other = c.post(
            "/predict", content=photo("coffee.jpg"), headers={"Idempotency-Key": "k", "Content-Type": "image/jpeg"}
        )
        fresh = c.post(
            "/predict", content=photo("coffee.jpg"), headers={"Idempotency-Key": "k2", "Content-Type": "image/jpeg"}
        )
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
    assert fresh.status_code == 200


def test_idempotency_key_is_released_when_enqueue_fails(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    broken = TwopassService(
        aws, DynamoJobStore(aws.table_name), SqsPublisher(aws.queue_url + "-missing"), fast_classifier
    )
    headers = {"Idempotency-Key": "retry-me", "Content-Type": "image/jpeg"}
    with TestClient(create_app(broken), raise_server_exceptions=False) as c:
        assert c.post("/predict", content=cat_jpeg, headers=headers).status_code == 503
    with client_for(aws, fast_classifier) as c:
        retried = c.post("/predict", content=cat_jpeg, headers=headers)
    assert retried.status_code == 200  # the client's retry with the same key goes through


def test_concurrent_requests_with_one_key_make_one_job(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    results: list[int] = []
    with client_for(aws, fast_classifier) as c:

        def post() -> None:
            r = c.post("/predict", content=cat_jpeg, headers={"Idempotency-Key": "race", "Content-Type": "image/jpeg"})
            results.append(r.status_code)

        threads = [threading.Thread(target=post) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert set(results) <= {200, 409}
    assert results.count(200) >= 1
    assert len(messages(aws.queue_url)) == 1


def test_bad_idempotency_key_is_400(aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes) -> None:
    with client_for(aws, fast_classifier) as c:
        r = c.post("/predict", content=cat_jpeg, headers={"Idempotency-Key": "x" * 300, "Content-Type": "image/jpeg"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_idempotency_key"


# -- API keys -----------------------------------------------------------------------------------


def test_api_keys_guard_everything_but_health(aws: Settings, fast_classifier: Classifier) -> None:
    with client_for(aws.replace(api_keys="k1, k2"), fast_classifier) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/metadata").status_code == 403
        assert c.get("/metadata", headers={"x-api-key": "nope"}).json()["error"] == "forbidden"
        assert c.get("/metadata", headers={"x-api-key": "k2"}).status_code == 200


# -- claim check --------------------------------------------------------------------------------


def noisy_png(pixels: int) -> bytes:
    """A real image that compresses badly, so it is big in bytes."""
    import numpy as np

    rng = np.random.default_rng(7)
    side = int(pixels**0.5)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def run_worker_until(
    settings: Settings, classifier: Classifier, job_ids: list[str], timeout: float = 30
) -> dict[str, JobRecord]:
    store = DynamoJobStore(settings.table_name)
    worker = Worker(classifier, SqsSource(settings.queue_url, visibility_timeout=5), store, settings)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = {j: store.get(j) for j in job_ids}
            if all(r is not None and r.final for r in records.values()):
                return {j: r for j, r in records.items() if r is not None}
            time.sleep(0.05)
        raise AssertionError(f"not final: {records}")
    finally:
        worker.stop()
        thread.join(timeout=30)


def test_big_image_travels_through_the_payload_bucket(
    aws: Settings, fast_classifier: Classifier, slow_classifier: Classifier
) -> None:
    assert aws.payload_bucket, "the template gives the API a payload bucket"
    big = noisy_png(600 * 600)
    assert len(big) > aws.inline_image_bytes
    with client_for(aws, fast_classifier) as c:
        response = c.post("/predict", content=big, headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    job_id = response.json()["job_id"]
    (msg,) = messages(aws.queue_url)
    body = json.loads(msg["Body"])
    assert "image_b64" not in body and body["image_ref"].startswith(f"s3://{aws.payload_bucket}/")
    assert len(msg["Body"]) < 1000
    records = run_worker_until(aws, slow_classifier, [job_id])
    assert records[job_id].status is JobStatus.SUCCEEDED
    with pytest.raises(Exception, match=r"404|Not Found|NoSuchKey"):  # deleted once the result was durable
        boto3.client("s3", region_name="us-east-1").head_object(
            Bucket=aws.payload_bucket, Key=f"{payloads.PREFIX}{job_id}"
        )


def test_without_a_bucket_images_over_the_queue_limit_are_413(aws: Settings, fast_classifier: Classifier) -> None:
    big = noisy_png(700 * 700)
    assert len(big) > SQS_INLINE_LIMIT
    with client_for(aws.replace(payload_bucket=""), fast_classifier) as c:
        response = c.post("/predict", content=big, headers={"Content-Type": "image/png"})
    assert response.status_code == 413
    assert "payload bucket" in response.json()["detail"]


# -- dead letters and redrive -------------------------------------------------------------------


def dead_letter(settings: Settings, store: DynamoJobStore, image: bytes, *, status: str = "running") -> str:
    """A job whose message sits in the DLQ, as after maxReceiveCount crashed deliveries."""
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id))
    if status != "queued":
        store.start(job_id, "crashed-worker")
    dlq = dead_letter_queue_url(settings.queue_url)
    assert dlq is not None
    sqs().send_message(QueueUrl=dlq, MessageBody=JobMessage(job_id=job_id, image=image).encode())
    return job_id


def test_sweep_marks_dead_lettered_jobs_failed_with_a_reason(aws: Settings, cat_jpeg: bytes) -> None:
    store = DynamoJobStore(aws.table_name)
    ids = [dead_letter(aws, store, cat_jpeg), dead_letter(aws, store, cat_jpeg, status="queued")]
    dlq = dead_letter_queue_url(aws.queue_url)
    assert dlq is not None
    assert sweep(dlq, store) == 2
    for job_id in ids:
        record = store.get(job_id)
        assert record is not None and record.status is JobStatus.FAILED
        assert record.error is not None and "dead-lettered" in record.error
    assert sweep(dlq, store, visibility=0) == 0  # idempotent: nothing new to mark


def test_redrive_reopens_failed_jobs_and_they_then_succeed(
    aws: Settings, cat_jpeg: bytes, slow_classifier: Classifier
) -> None:
    store = DynamoJobStore(aws.table_name)
    job_id = dead_letter(aws, store, cat_jpeg)
    done_id = dead_letter(aws, store, cat_jpeg)
    store.succeed(done_id, {"model": "m", "label": "tabby", "top_k": []})
    dlq = dead_letter_queue_url(aws.queue_url)
    assert dlq is not None
    sweep(dlq, store, visibility=0)
    report = redrive(dlq, aws.queue_url, store)
    assert (report.moved, report.reopened, report.dropped_done) == (1, 1, 1)
    assert messages(dlq) == []
    records = run_worker_until(aws, slow_classifier, [job_id])
    assert records[job_id].status is JobStatus.SUCCEEDED
    assert records[job_id].result is not None and records[job_id].result["label"] in CAT_LABELS
    done = store.get(done_id)
    assert done is not None and done.result == {"model": "m", "label": "tabby", "top_k": []}  # never rerun


def test_redrive_cli(aws: Settings, cat_jpeg: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    from twopass.cli import main

    store = DynamoJobStore(aws.table_name)
    dead_letter(aws, store, cat_jpeg)
    assert main(["redrive", "--queue-url", aws.queue_url, "--table", aws.table_name]) == 0
    assert "moved 1 message(s) back" in capsys.readouterr().out
    assert len(messages(aws.queue_url)) == 1


class ExplodingClassifier:
    """The real slow model whose batch run fails, as a CUDA error or OOM would."""

    def __init__(self, real: Classifier) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def predict_batch(self, tensors: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_failure_on_the_last_allowed_delivery_records_failed(
    aws: Settings, slow_classifier: Classifier, cat_jpeg: bytes
) -> None:
    store = DynamoJobStore(aws.table_name)
    source = SqsSource(aws.queue_url, visibility_timeout=1)
    assert source.max_receive_count == 5  # read from the template's redrive policy
    job_id = new_job_id()
    store.create(JobRecord(job_id=job_id))
    SqsPublisher(aws.queue_url).publish(JobMessage(job_id=job_id, image=cat_jpeg))
    worker = Worker(ExplodingClassifier(slow_classifier), source, store, aws.replace(max_wait_ms=0))  # type: ignore[arg-type]
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not ((r := store.get(job_id)) and r.final):
            time.sleep(0.1)
    finally:
        worker.stop()
        thread.join(timeout=30)
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.FAILED
    assert record.attempts == 5
    assert record.error is not None and "illegal memory access" in record.error

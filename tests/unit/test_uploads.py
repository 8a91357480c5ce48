"""Presigned uploads and waiting reads in the API, in-process against the template's resources in moto.

The client's PUT to the presigned URL is stood in for by a ``put_object`` on the same key (moto
in-process serves no HTTP); tests/e2e/test_uploads_api.py PUTs through the URL itself.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.models.runtime import Classifier
from twopass.payloads import ImageChangedError, PayloadStore
from twopass.queue.base import JobMessage
from twopass.queue.sqs import SqsPublisher
from twopass.uploads import UPLOAD_PREFIX, Uploads

KEY_A = {"x-api-key": "key-a"}
KEY_B = {"x-api-key": "key-b"}
RESULT = {"model": "m", "label": "tabby", "top_k": [{"label": "tabby", "probability": 0.75, "class_id": 281}]}


def api(settings: Settings, classifier: Classifier, **changes: object) -> TestClient:
    settings = settings.replace(api_keys="key-a,key-b", **changes)
    service = TwopassService(
        settings,
        DynamoJobStore(settings.table_name),
        SqsPublisher(settings.queue_url),
        classifier=classifier,
        payloads=PayloadStore(boto3.client("s3", region_name="us-east-1")),
    )
    return TestClient(create_app(service, emit_metrics=False), raise_server_exceptions=False)


@pytest.fixture
def client(aws: Settings, fast_classifier: Classifier) -> Iterator[TestClient]:
    with api(aws, fast_classifier) as c:
        yield c


def new_upload(client: TestClient, headers: dict[str, str] = KEY_A, **body: object) -> dict[str, object]:
    response = client.post("/uploads", json={"content_type": "image/jpeg", **body}, headers=headers)
    assert response.status_code == 201, response.text
    grant: dict[str, object] = response.json()
    return grant


def put_through(settings: Settings, grant: dict[str, object], data: bytes, content_type: str = "image/jpeg") -> None:
    """What the client's PUT to ``grant["url"]`` does: the object at the URL's key."""
    path = urlsplit(str(grant["url"])).path.lstrip("/")
    bucket, key = (
        path.split("/", 1) if path.startswith(settings.payload_bucket + "/") else (settings.payload_bucket, path)
    )
    boto3.client("s3", region_name="us-east-1").put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)


def messages(queue_url: str) -> list[dict[str, object]]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    out = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0)
    return [json.loads(m["Body"]) for m in out.get("Messages", [])]


def test_post_uploads_answers_a_presigned_put_under_the_owners_prefix(client: TestClient, aws: Settings) -> None:
    before = time.time()
    grant = new_upload(client, content_length=1234)
    assert set(grant) == {"upload_id", "url", "method", "headers", "expires_at", "max_bytes", "post"}
    assert grant["method"] == "PUT" and grant["max_bytes"] == 50 * 1024 * 1024
    assert grant["headers"] == {"Content-Type": "image/jpeg", "Content-Length": "1234"}
    url = urlsplit(str(grant["url"]))
    assert url.path.endswith(f"/{grant['upload_id']}") and f"/{UPLOAD_PREFIX}" in url.path
    query = parse_qs(url.query)
    assert query["X-Amz-Expires"] == ["900"] and "X-Amz-Signature" in query
    assert "content-type" in query["X-Amz-SignedHeaders"][0], "the PUT is signed for its content type"
    expires = time.mktime(time.strptime(str(grant["expires_at"]), "%Y-%m-%dT%H:%M:%S.%fZ")) - time.timezone
    assert before + 890 <= expires <= time.time() + 910
    other = new_upload(client, KEY_B)
    assert urlsplit(str(other["url"])).path.rsplit("/", 2)[1] != url.path.rsplit("/", 2)[1], "a prefix per owner"
    post = grant["post"]
    assert isinstance(post, dict) and url.path.endswith("/" + post["fields"]["key"]), "the POST is for the same key"
    policy = json.loads(base64.b64decode(post["fields"]["policy"]))
    assert ["content-length-range", 1, 50 * 1024 * 1024] in policy["conditions"], "S3 caps a POST's size"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"content_type": "text/plain"}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ({"content_type": "image/png", "content_length": 50 * 1024 * 1024 + 1}, 413, "payload_too_large"),
        ({"content_type": "image/png", "content_length": "12"}, 422, "validation_error"),
        ({"content_type": "image/png", "extra": 1}, 422, "validation_error"),
    ],
)
def test_post_uploads_refuses_other_types_and_oversized_images(
    client: TestClient, body: dict[str, object], status: int, code: str
) -> None:
    response = client.post("/uploads", json=body, headers=KEY_A)
    assert response.status_code == status and response.json()["error"] == code, response.text


def test_an_upload_becomes_a_job_by_reference_once_and_for_its_owner_only(
    client: TestClient, aws: Settings, cat_jpeg: bytes
) -> None:
    grant = new_upload(client)
    body = {"upload_id": grant["upload_id"]}
    pending = client.post("/predict", json=body, headers=KEY_A)
    assert pending.status_code == 409 and pending.json()["error"] == "upload_pending"
    assert pending.headers["retry-after"] == "1"
    put_through(aws, grant, cat_jpeg)
    assert client.post("/predict", json=body, headers=KEY_B).json()["error"] == "upload_not_found"
    first = client.post("/predict", json=body, headers=KEY_A)
    assert first.status_code == 200, first.text
    job_id = first.json()["job_id"]
    assert first.json()["efficientnet-lite0"] in {"tabby", "tiger cat", "Egyptian cat"}
    [message] = messages(aws.queue_url)
    assert message["job_id"] == job_id and "image" not in message
    ref, pin = str(message["image_ref"]).split("#")
    assert ref.endswith(f"/{grant['upload_id']}"), "the job refers to the upload, no copy"
    assert f"sha256={hashlib.sha256(cat_jpeg).hexdigest()}" in pin, "pinned to the bytes the fast model saw"
    assert client.get(f"/job/{job_id}", headers=KEY_A).json()["status"] == "queued"
    again = client.post("/predict", json=body, headers=KEY_A)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert len(messages(aws.queue_url)) == 1, "one upload, one job"


def test_unknown_malformed_and_expired_uploads_are_404(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    with api(aws, fast_classifier, upload_expiry_minutes=1 / 60) as client:
        for upload_id in ("0" * 32, "not-an-id"):
            response = client.post("/predict", json={"upload_id": upload_id}, headers=KEY_A)
            assert response.status_code == 404 and response.json()["error"] == "upload_not_found"
        grant = new_upload(client)
        time.sleep(1.1)
        late = client.post("/predict", json={"upload_id": grant["upload_id"]}, headers=KEY_A)
        assert late.status_code == 404 and "expired" in late.json()["detail"]


def test_an_oversized_or_non_image_upload_is_refused_at_use(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    with api(aws, fast_classifier, upload_max_bytes=len(cat_jpeg) - 1) as client:
        grant = new_upload(client)
        put_through(aws, grant, cat_jpeg)
        too_big = client.post("/predict", json={"upload_id": grant["upload_id"]}, headers=KEY_A)
        assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"
        grant = new_upload(client)
        put_through(aws, grant, b"hello", content_type="text/plain")
        wrong = client.post("/predict", json={"upload_id": grant["upload_id"]}, headers=KEY_A)
        assert wrong.status_code == 415 and wrong.json()["error"] == "unsupported_media_type"
    assert messages(aws.queue_url) == []


def test_an_uploaded_image_over_the_pixel_limit_is_413(client: TestClient, aws: Settings) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8000, 5001), (200, 30, 30)).save(buf, format="PNG")
    grant = new_upload(client, content_type="image/png")
    put_through(aws, grant, buf.getvalue(), "image/png")
    response = client.post("/predict", json={"upload_id": grant["upload_id"]}, headers=KEY_A)
    assert response.status_code == 413 and "pixels" in response.json()["detail"]


def test_an_upload_larger_than_the_inline_limit_is_classified(
    client: TestClient, aws: Settings, photo: Callable[[str], bytes]
) -> None:
    source = Image.open(io.BytesIO(photo("chelsea.jpg")))
    buf = io.BytesIO()
    source.resize((1400, 1050)).save(buf, format="PNG", compress_level=0)
    data = buf.getvalue()
    assert len(data) > aws.max_image_bytes, "bigger than POST /predict takes inline"
    grant = new_upload(client, content_type="image/png")
    put_through(aws, grant, data, "image/png")
    response = client.post("/predict", json={"upload_id": grant["upload_id"]}, headers=KEY_A)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued"


@pytest.mark.parametrize(
    "body", [{}, {"image_data": "aGVsbG8=", "upload_id": "0" * 32}, {"upload_id": None}, {"upload_id": 5}]
)
def test_predict_takes_exactly_one_of_image_data_and_upload_id(client: TestClient, body: dict[str, object]) -> None:
    response = client.post("/predict", json=body, headers=KEY_A)
    assert response.status_code == 422 and response.json()["error"] == "validation_error", response.text


def test_metadata_advertises_uploads(client: TestClient) -> None:
    uploads = client.get("/metadata", headers=KEY_A).json()["input"]["uploads"]
    assert uploads["path"] == "/uploads" and uploads["max_bytes"] == 50 * 1024 * 1024
    assert uploads["expiry_seconds"] == 900 and "image/png" in uploads["content_types"]


def test_without_a_payload_bucket_uploads_are_501(aws: Settings, fast_classifier: Classifier) -> None:
    with api(aws, fast_classifier, payload_bucket="") as client:
        response = client.post("/uploads", json={"content_type": "image/png"}, headers=KEY_A)
        assert response.status_code == 501 and response.json()["error"] == "uploads_unavailable"
        assert client.get("/metadata", headers=KEY_A).json()["input"]["uploads"] is None


def test_uploads_ref_and_claim_are_per_owner() -> None:
    uploads = Uploads(PayloadStore(object()), "b", max_bytes=10, expiry_seconds=60, clock=lambda: 100.0)
    assert uploads.ref("a", "f" * 32) != uploads.ref("b", "f" * 32)
    assert uploads.claim("a", "f" * 32, 60).key_hash != uploads.claim("b", "f" * 32, 60).key_hash
    assert uploads.claim("a", "f" * 32, 60).expires_at == 160


# -- an accepted image never changes ---------------------------------------------------------------


def test_an_image_sent_again_after_its_job_was_accepted_never_reaches_the_job(
    client: TestClient, aws: Settings, cat_jpeg: bytes, photo: Callable[[str], bytes]
) -> None:
    grant = new_upload(client)
    put_through(aws, grant, cat_jpeg)
    accepted = client.post("/predict", json={"upload_id": grant["upload_id"]}, headers=KEY_A)
    assert accepted.status_code == 200, accepted.text
    job_id = accepted.json()["job_id"]
    [message] = messages(aws.queue_url)
    put_through(aws, grant, photo("coffee.jpg"))  # the URL is still valid: the client sends another photo
    worker_payloads = PayloadStore(boto3.client("s3", region_name="us-east-1"))
    with pytest.raises(ImageChangedError, match="replaced after its job was accepted"):
        worker_payloads.image(JobMessage.decode(json.dumps(message)))  # what the worker reads
    store = DynamoJobStore(aws.table_name)
    assert store.start(job_id, "w1") is not None and store.fail(job_id, "invalid image: replaced")
    retry = client.post(f"/job/{job_id}/retry", headers=KEY_A)
    assert retry.status_code == 409 and retry.json()["error"] == "image_changed", retry.text
    assert "retry-after" not in retry.headers, "asking again changes nothing"
    put_through(aws, grant, b"\xff\xd8\xff" + b"0" * (50 * 1024 * 1024))  # over the limit, then a retry
    retry = client.post(f"/job/{job_id}/retry", headers=KEY_A)
    assert retry.status_code == 409 and retry.json()["error"] == "image_changed"
    put_through(aws, grant, cat_jpeg)  # the very bytes the job was accepted with: it may run again
    assert client.post(f"/job/{job_id}/retry", headers=KEY_A).status_code == 200
    assert status_of(client, job_id) == "queued"


def status_of(client: TestClient, job_id: str) -> str:
    return str(client.get(f"/job/{job_id}", headers=KEY_A).json()["status"])


# -- GET /job/{id}?wait= ---------------------------------------------------------------------------


def queued_job(client: TestClient) -> str:
    response = client.get("/predict/test", headers=KEY_A)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def test_wait_answers_as_soon_as_the_job_ends(client: TestClient, aws: Settings) -> None:
    job_id = queued_job(client)
    store = DynamoJobStore(aws.table_name)

    def finish() -> None:
        time.sleep(0.6)
        store.start(job_id, "w1")
        store.succeed(job_id, RESULT)

    threading.Thread(target=finish).start()
    started = time.monotonic()
    response = client.get(f"/job/{job_id}", params={"wait": 10}, headers=KEY_A)
    took = time.monotonic() - started
    assert response.status_code == 200 and response.json()["status"] == "succeeded"
    assert 0.6 <= took < 3.0, f"answered {took:.2f} s after asking"


def test_wait_answers_the_job_as_it_is_when_the_wait_runs_out(client: TestClient, aws: Settings) -> None:
    job_id = queued_job(client)
    reads = 0
    store = client.app.state.twopass.service.store
    get = store.get

    def counted(job: str) -> object:
        nonlocal reads
        reads += 1
        return get(job)

    store.get = counted
    started = time.monotonic()
    response = client.get(f"/job/{job_id}", params={"wait": 1.5}, headers=KEY_A)
    took = time.monotonic() - started
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert 1.5 <= took < 2.5
    assert reads <= 7, f"{reads} reads in 1.5 s: backing off, not busy polling"
    quick = time.monotonic()
    assert client.get(f"/job/{job_id}", headers=KEY_A).json()["status"] == "queued"
    assert time.monotonic() - quick < 1.0, "no wait unless asked"


@pytest.mark.parametrize("wait", ["21", "-1", "abc", "nan", "inf"])
def test_wait_outside_0_to_20_is_422(client: TestClient, wait: str) -> None:
    job_id = queued_job(client)
    response = client.get(f"/job/{job_id}?wait={wait}", headers=KEY_A)
    assert response.status_code == 422 and response.json()["error"] == "validation_error"


def test_wait_on_another_owners_job_is_404_at_once(client: TestClient) -> None:
    job_id = queued_job(client)
    started = time.monotonic()
    response = client.get(f"/job/{job_id}", params={"wait": 5}, headers=KEY_B)
    assert response.status_code == 404 and time.monotonic() - started < 1.0

"""Batch items that name an upload (``{"upload_id"}``), in process against the template's resources in moto:
read from the bucket as POST /predict reads them, with its errors as item errors, one upload one job."""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.unit.test_uploads import KEY_A, KEY_B, api, messages, new_upload, put_through
from twopass.config import Settings
from twopass.models.runtime import Classifier
from twopass.payloads import ImageChangedError, PayloadStore


def small(jpeg: bytes, size: int = 160) -> bytes:
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


@pytest.fixture
def client(aws: Settings, fast_classifier: Classifier) -> Iterator[TestClient]:
    with api(aws, fast_classifier) as c:
        yield c


def batch(client: TestClient, items: list[dict[str, Any]], headers: dict[str, str] = KEY_A) -> dict[str, Any]:
    response = client.post("/batches", json={"items": items}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_upload_items_become_jobs_by_reference_beside_inline_ones_and_bad_uploads_are_item_errors(
    client: TestClient, aws: Settings, cat_jpeg: bytes
) -> None:
    ready = new_upload(client)
    put_through(aws, ready, cat_jpeg)
    pending = new_upload(client)
    foreign = new_upload(client, KEY_B)
    put_through(aws, foreign, cat_jpeg)
    not_image = new_upload(client)
    put_through(aws, not_image, b"hello", content_type="text/plain")
    items: list[dict[str, Any]] = [
        {"upload_id": ready["upload_id"]},
        {"image_data": base64.b64encode(small(cat_jpeg)).decode()},
        {"upload_id": pending["upload_id"]},
        {"upload_id": foreign["upload_id"]},  # another owner's upload is as unknown as a missing one
        {"upload_id": "0" * 32},
        {"upload_id": "not-an-id"},
        {"upload_id": not_image["upload_id"]},
        {"upload_id": ready["upload_id"]},  # the same upload again in the batch: the same job
    ]
    body = batch(client, items)
    answers = body["items"]
    assert [a["index"] for a in answers] == list(range(8))
    errors = {a["index"]: a["error"] for a in answers if "error" in a}
    assert errors == {
        2: "upload_pending",
        3: "upload_not_found",
        4: "upload_not_found",
        5: "upload_not_found",
        6: "unsupported_media_type",
    }
    assert answers[0]["efficientnet-lite0"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert answers[7] == {**answers[0], "index": 7}
    by_job = {m["job_id"]: m for m in messages(aws.queue_url)}
    assert set(by_job) == {answers[0]["job_id"], answers[1]["job_id"]}, "two jobs: the repeat made none"
    upload_message = by_job[answers[0]["job_id"]]
    ref, pin = str(upload_message["image_ref"]).split("#")
    assert "image_b64" not in upload_message and ref.endswith(f"/{ready['upload_id']}")
    assert f"sha256={hashlib.sha256(cat_jpeg).hexdigest()}" in pin, "pinned to the bytes the fast model saw"
    put_through(aws, ready, b"another photo")  # sent again after the batch: the job's reference refuses it
    with pytest.raises(ImageChangedError):
        PayloadStore(boto3.client("s3", region_name="us-east-1")).fetch(str(upload_message["image_ref"]))
    assert "image_b64" in by_job[answers[1]["job_id"]], "the inline item stays inline"

    state = client.get(f"/batches/{body['batch_id']}", headers=KEY_A).json()
    assert state["counts"]["queued"] == 3 and state["counts"]["refused"] == 5
    assert state["items"][7]["job_id"] == state["items"][0]["job_id"] == answers[0]["job_id"]
    job = client.get(f"/job/{answers[0]['job_id']}", headers=KEY_A).json()
    assert job["status"] == "queued"


def test_an_upload_used_by_predict_then_a_batch_is_one_job(client: TestClient, aws: Settings, cat_jpeg: bytes) -> None:
    grant = new_upload(client)
    put_through(aws, grant, cat_jpeg)
    first = client.post("/predict", json={"upload_id": grant["upload_id"]}, headers=KEY_A)
    assert first.status_code == 200, first.text
    again = batch(client, [{"upload_id": grant["upload_id"]}])
    assert again["items"] == [{"index": 0, **first.json()}]
    # And the other way round: a batch's upload job is what /predict answers for that upload later.
    other = new_upload(client)
    put_through(aws, other, cat_jpeg)
    [item] = batch(client, [{"upload_id": other["upload_id"]}])["items"]
    later = client.post("/predict", json={"upload_id": other["upload_id"]}, headers=KEY_A)
    assert later.status_code == 200 and later.headers["idempotent-replayed"] == "true"
    assert later.json()["job_id"] == item["job_id"]
    assert len(messages(aws.queue_url)) == 2


def test_an_oversized_or_expired_upload_is_an_item_error(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    with api(aws, fast_classifier, upload_max_bytes=len(cat_jpeg) - 1, upload_expiry_minutes=1 / 60) as client:
        too_big = new_upload(client)
        put_through(aws, too_big, cat_jpeg)
        late = new_upload(client)
        time.sleep(1.1)
        answers = batch(client, [{"upload_id": too_big["upload_id"]}, {"upload_id": late["upload_id"]}])["items"]
        assert [a["error"] for a in answers] == ["payload_too_large", "upload_not_found"]
        assert "expired" in answers[1]["detail"]
    assert messages(aws.queue_url) == []


def test_an_upload_over_the_inline_limit_is_classified_in_a_batch(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    # The request body's limit does not apply to an image that came through the bucket.
    with api(aws, fast_classifier, max_image_bytes=len(cat_jpeg) - 1) as client:
        grant = new_upload(client)
        put_through(aws, grant, cat_jpeg)
        [item] = batch(client, [{"upload_id": grant["upload_id"]}])["items"]
        assert "job_id" in item, item


def test_without_a_payload_bucket_upload_items_are_item_errors(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    with api(aws, fast_classifier, payload_bucket="") as client:
        items = [{"upload_id": "0" * 32}, {"image_data": base64.b64encode(small(cat_jpeg)).decode()}]
        answers = batch(client, items)["items"]
        assert answers[0]["error"] == "uploads_unavailable" and "job_id" in answers[1]

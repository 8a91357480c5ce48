"""The FastAPI app over its service: contract shapes, input validation, dependency failures."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import boto3
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import CAT_LABELS
from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.jobs.base import JobStatus
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.models.runtime import Classifier
from twopass.queue.sqs import SqsPublisher


def make_client(
    settings: Settings, classifier: Classifier, *, queue_url: str | None = None, table: str | None = None
) -> TestClient:
    service = TwopassService(
        settings,
        DynamoJobStore(table or settings.table_name),
        SqsPublisher(queue_url or settings.queue_url),
        classifier=classifier,
    )
    return TestClient(create_app(service), raise_server_exceptions=False)


@pytest.fixture
def client(aws: Settings, fast_classifier: Classifier) -> Iterator[TestClient]:
    with make_client(aws, fast_classifier) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def queue_depth(settings: Settings) -> int:
    attrs = boto3.client("sqs", region_name="us-east-1").get_queue_attributes(
        QueueUrl=settings.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def test_predict_json_keeps_the_seed_shape_and_adds_details(client: TestClient, cat_jpeg: bytes) -> None:
    response = client.post("/predict", json={"image_data": b64(cat_jpeg)})
    assert response.status_code == 200
    data = response.json()
    assert set(data) >= {"job_id", "efficientnet-lite0", "status", "fast", "status_url"}
    assert data["efficientnet-lite0"] in CAT_LABELS
    assert data["fast"]["label"] == data["efficientnet-lite0"]
    probabilities = [t["probability"] for t in data["fast"]["top_k"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    assert data["status_url"] == f"/job/{data['job_id']}"


def test_predict_raw_image_body(client: TestClient, photo: object) -> None:
    response = client.post("/predict", content=photo("coffee.jpg"), headers={"Content-Type": "image/jpeg"})  # type: ignore[operator]
    assert response.status_code == 200
    assert response.json()["efficientnet-lite0"] == "espresso"


def test_data_url_is_accepted(client: TestClient, cat_jpeg: bytes) -> None:
    response = client.post("/predict", json={"image_data": "data:image/jpeg;base64," + b64(cat_jpeg)})
    assert response.status_code == 200


def test_job_lifecycle_view(client: TestClient, aws: Settings, cat_jpeg: bytes) -> None:
    job_id = client.get("/predict/test").json()["job_id"]
    queued = client.get(f"/job/{job_id}").json()
    assert queued[job_id] == {"prediction": None}
    assert queued["status"] == "queued" and queued["created_at"].endswith("Z")
    store = DynamoJobStore(aws.table_name)
    store.start(job_id, "w")
    result = {
        "model": "efficientnet-lite2",
        "label": "tabby",
        "top_k": [{"label": "tabby", "probability": 0.9, "class_id": 281}],
    }
    store.succeed(job_id, result)
    done = client.get(f"/job/{job_id}").json()
    assert done[job_id] == {"prediction": "tabby"}  # the seed's shape
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert done["slow"]["top_k"][0]["class_id"] == 281
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]


def test_failed_job_shows_its_error(client: TestClient, aws: Settings) -> None:
    job_id = client.get("/predict/test").json()["job_id"]
    DynamoJobStore(aws.table_name).fail(job_id, "invalid image: truncated")
    data = client.get(f"/job/{job_id}").json()
    assert data["status"] == "failed" and data["error"] == "invalid image: truncated"
    assert data[job_id] == {"prediction": None}


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"", "headers": {"Content-Type": "application/json"}}, 400, "empty_body"),
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
        ({"json": {"image_data": 42}}, 422, "validation_error"),
        ({"json": {"image": "x"}}, 422, "validation_error"),
        ({"json": ["image_data"]}, 422, "validation_error"),
        ({"json": {"image_data": "%%%"}}, 400, "invalid_base64"),
        ({"json": {"image_data": ""}}, 400, "empty_image"),
        ({"json": {"image_data": b64(b"plain text, no pixels")}}, 400, "invalid_image"),
        ({"content": b"GIF89a\x01\x00", "headers": {"Content-Type": "image/gif"}}, 400, "invalid_image"),
        ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_creates_no_job(
    client: TestClient, aws: Settings, kwargs: dict[str, object], status: int, code: str
) -> None:
    response = client.post("/predict", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.json()["detail"]
    assert queue_depth(aws) == 0


def test_size_limits(aws: Settings, fast_classifier: Classifier) -> None:
    small = aws.replace(max_image_bytes=2000, max_image_pixels=100 * 100)
    with make_client(small, fast_classifier) as c:
        too_many_bytes = c.post("/predict", content=b"\xff" * 3000, headers={"Content-Type": "image/jpeg"})
        assert too_many_bytes.status_code == 413 and too_many_bytes.json()["error"] == "payload_too_large"
        json_too_big = c.post("/predict", json={"image_data": b64(b"\xff" * 3000)})
        assert json_too_big.status_code == 413
        too_many_pixels = c.post("/predict", content=png((200, 200)), headers={"Content-Type": "image/png"})
        assert too_many_pixels.status_code == 413 and "pixels" in too_many_pixels.json()["detail"]
    assert queue_depth(aws) == 0


def test_unknown_and_malformed_job_ids_are_404(client: TestClient) -> None:
    for job_id in ("0" * 32, "not-a-job", "%23workers"):
        response = client.get(f"/job/{job_id}")
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


def test_queue_down_gives_503_and_marks_the_record_failed(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    missing = aws.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    with make_client(aws, fast_classifier, queue_url=missing) as c:
        response = c.post("/predict", json={"image_data": b64(cat_jpeg)})
    assert response.status_code == 503
    assert response.json()["error"] == "enqueue_failed"
    assert response.headers["retry-after"]
    # No orphaned "queued" record that no worker will ever see: every record says failed.
    items = boto3.client("dynamodb", region_name="us-east-1").scan(TableName=aws.table_name)["Items"]
    assert len(items) == 1
    assert items[0]["status"]["S"] == JobStatus.FAILED.value
    assert "enqueue" in items[0]["error"]["S"]


def test_table_down_gives_503_and_publishes_nothing(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    with make_client(aws, fast_classifier, table="no-such-table") as c:
        response = c.post("/predict", json={"image_data": b64(cat_jpeg)})
    assert response.status_code == 503
    assert response.json()["error"] == "dependency_unavailable"
    assert queue_depth(aws) == 0


def test_health_and_health_all(client: TestClient, aws: Settings) -> None:
    assert client.get("/health").json() == {"health": "ok"}
    DynamoJobStore(aws.table_name).beat("w1", {"model": "efficientnet-lite2"})
    data = client.get("/health/all").json()
    assert data["efficientnet-lite0"] == "ok"
    assert data["status"] == "ok"
    backends = data["backends"]
    assert {k: v["status"] for k, v in backends.items()} == {
        "fast_model": "ok",
        "queue": "ok",
        "table": "ok",
        "worker": "ok",
    }
    assert backends["worker"]["alive"] == 1


def test_health_all_reports_a_broken_table(aws: Settings, fast_classifier: Classifier) -> None:
    with make_client(aws, fast_classifier, table="no-such-table") as c:
        data = c.get("/health/all").json()
    assert data["status"] == "degraded"
    assert data["backends"]["table"]["status"] == "error"


def test_openapi_documents_both_body_types(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "image/*"} <= set(content)

"""POST /batches and GET /batches/{id} in process (moto): item errors stay items, batched inference, owners."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.jobs.base import BatchRecord, JobRecord, JobStatus, new_batch_id, new_job_id
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.queue.sqs import SqsPublisher

KEY_A, KEY_B = {"x-api-key": "key-a"}, {"x-api-key": "key-b"}
RESULT = {"model": "slow", "label": "tabby", "top_k": [{"label": "tabby", "probability": 0.75, "class_id": 281}]}


class CountingClassifier:
    """The real fast model, counting ``session.run`` calls (batched inference: one per batch)."""

    def __init__(self, inner: Classifier) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict_batch(self, tensors: Any) -> Any:
        self.batches.append(len(tensors))
        return self.inner.predict_batch(tensors)

    def predict(self, tensor: Any) -> Any:
        self.batches.append(1)
        return self.inner.predict(tensor)


def small(jpeg: bytes, size: int = 160) -> bytes:
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def counting(fast_classifier: Classifier) -> CountingClassifier:
    return CountingClassifier(fast_classifier)


@pytest.fixture
def client(aws: Settings, counting: CountingClassifier) -> Iterator[TestClient]:
    settings = aws.replace(api_keys="key-a,key-b")
    service = TwopassService(
        settings,
        DynamoJobStore(settings.table_name),
        SqsPublisher(settings.queue_url),
        classifier=counting,  # type: ignore[arg-type]
    )
    with TestClient(create_app(service, emit_metrics=False), raise_server_exceptions=False) as c:
        c.app_state_service = service  # type: ignore[attr-defined]
        yield c


def test_a_batch_with_bad_items_answers_each_item_and_runs_the_model_once(
    client: TestClient, counting: CountingClassifier, cat_jpeg: bytes
) -> None:
    image = b64(small(cat_jpeg))
    items: list[Any] = [{"image_data": image} for _ in range(12)]
    items[3] = {"image_data": "not base64!!"}
    items[5] = {"image_data": b64(b"GIF89a but not really an image")}
    items[7] = {"upload_id": "0" * 32}
    items[9] = {"image_data": image, "upload_id": "x"}
    response = client.post("/batches", json={"items": items}, headers=KEY_A)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["batch_id"]) == 32
    answers = body["items"]
    assert [a["index"] for a in answers] == list(range(12))
    errors = {a["index"]: a["error"] for a in answers if "error" in a}
    assert errors == {3: "invalid_base64", 5: "invalid_image", 7: "upload_not_found", 9: "invalid_item"}
    jobs = [a for a in answers if "job_id" in a]
    assert len(jobs) == 8
    assert all(a["status"] == "queued" and a["efficientnet-lite0"] == a["fast"]["label"] for a in jobs)
    assert all(a["detail"] for a in answers if "error" in a)
    # Batched inference: the eight decoded images went through the model in one call.
    assert counting.batches == [8]

    status = client.get(f"/batches/{body['batch_id']}", headers=KEY_A)
    assert status.status_code == 200, status.text
    state = status.json()
    assert state["total"] == 12 and state["done"] is False
    assert state["counts"]["queued"] == 8 and state["counts"]["refused"] == 4
    assert [i["index"] for i in state["items"]] == list(range(12))
    job = next(i for i in state["items"] if "job_id" in i)
    assert job["status"] == "queued" and job["job_id"] == jobs[0]["job_id"]


def test_a_batch_reads_back_slow_results_and_belongs_to_its_owner(client: TestClient, cat_jpeg: bytes) -> None:
    image = b64(small(cat_jpeg))
    body = client.post("/batches", json={"items": [{"image_data": image}] * 3}, headers=KEY_A).json()
    batch_id = body["batch_id"]
    store: DynamoJobStore = client.app_state_service.store  # type: ignore[attr-defined]
    first, second, _ = (item["job_id"] for item in body["items"])
    record = store.get(first)
    assert record is not None and record.batch_id == batch_id
    assert store.succeed(first, RESULT)
    assert store.fail(second, "boom")
    state = client.get(f"/batches/{batch_id}", headers=KEY_A).json()
    assert state["counts"] | {} == {**state["counts"], "succeeded": 1, "failed": 1, "queued": 1}
    assert state["items"][0]["slow"]["label"] == "tabby" and state["items"][0][first]["prediction"] == "tabby"
    assert state["items"][1]["error"] == "boom"
    # Another key's batch is as unknown as a missing one, and so is a malformed id.
    assert client.get(f"/batches/{batch_id}", headers=KEY_B).status_code == 404
    assert client.get(f"/batches/{new_batch_id()}", headers=KEY_A).status_code == 404
    assert client.get("/batches/..%2Fetc", headers=KEY_A).status_code == 404
    assert client.get(f"/job/{first}", headers=KEY_B).status_code == 404


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"items": []}, 422, "validation_error"),
        ({"items": [{"image_data": "AAAA"}] * 101}, 422, "validation_error"),
        ({"items": "nope"}, 422, "validation_error"),
        ({"pictures": []}, 422, "validation_error"),
    ],
)
def test_a_malformed_batch_is_a_4xx(client: TestClient, payload: dict[str, Any], status: int, code: str) -> None:
    response = client.post("/batches", json=payload, headers=KEY_A)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


def test_a_batch_of_only_bad_items_is_still_200(client: TestClient, counting: CountingClassifier) -> None:
    response = client.post("/batches", json={"items": [{"image_data": "%%%"}, {"what": 1}]}, headers=KEY_A)
    assert response.status_code == 200, response.text
    assert [i["error"] for i in response.json()["items"]] == ["invalid_base64", "invalid_item"]
    assert counting.batches == []


def test_batch_records_and_get_many_in_both_stores(aws: Settings) -> None:
    for store in (MemoryJobStore(), DynamoJobStore(aws.table_name)):
        ids = [new_job_id() for _ in range(130)]  # more than one BatchGetItem call
        for job_id in ids:
            store.create(JobRecord(job_id=job_id, batch_id="b"))
        found = store.get_many([*ids, new_job_id()])
        assert set(found) == set(ids) and all(r.batch_id == "b" for r in found.values())
        batch = BatchRecord(new_batch_id(), owner="o", items=[{"index": 0, "job_id": ids[0]}])
        store.create_batch(batch)
        again = store.get_batch(batch.batch_id)
        assert again is not None and again.owner == "o" and again.job_ids == [ids[0]]
        assert store.get_batch(new_batch_id()) is None
        # A batch record is not a job: it shows in no owner's list.
        assert store.list_jobs("o")[0] == []
        assert store.get(ids[0]) is not None and store.get(ids[0]).status is JobStatus.QUEUED  # type: ignore[union-attr]

"""``POST /predict``'s and ``GET /predict/test``'s query parameters, read in one pass instead of declared
one by one: documented, validated and refused as the declared parameters were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.queue.memory import MemoryQueue

#: The parameters as FastAPI documented them when they were declared in the routes' signatures.
DECLARED = json.loads(Path(__file__).with_name("predict_parameters.json").read_text())


@pytest.fixture
def client(fast_classifier: Classifier) -> TestClient:
    service = TwopassService(
        Settings(), MemoryJobStore(), MemoryQueue(), fast_classifier, high_priority_publisher=MemoryQueue()
    )
    return TestClient(create_app(service, emit_metrics=False))


def test_the_openapi_document_lists_the_parameters_as_declared_ones_were() -> None:
    paths = create_app(settings=Settings()).openapi()["paths"]
    assert paths["/predict"]["post"]["parameters"] == DECLARED["POST /predict"]
    assert paths["/predict/test"]["get"]["parameters"] == DECLARED["GET /predict/test"]
    assert "requestBody" in paths["/predict"]["post"]  # the body's documentation is kept beside them


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("slow=sometimes", "query.slow: Input should be 'auto', 'always' or 'never'"),
        ("deadline_seconds=soon", "query.deadline_seconds: Input should be a valid number"),
        ("priority=urgent&on_overload=panic", "query.priority: Input should be 'high' or 'normal'; query.on_overload:"),
    ],
)
def test_a_bad_parameter_is_a_422_naming_it(client: TestClient, cat_jpeg: bytes, query: str, detail: str) -> None:
    for method, path in (("POST", "/predict"), ("GET", "/predict/test")):
        if method == "GET" and "slow" in query:
            continue  # /predict/test takes no slow parameter: ignored there, as any unknown one
        response = client.request(method, f"{path}?{query}", content=cat_jpeg, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "validation_error"
        assert response.json()["detail"].startswith(detail)


def test_good_parameters_reach_the_job(client: TestClient, cat_jpeg: bytes) -> None:
    response = client.post(
        "/predict?priority=high&deadline_seconds=30&slow=always&unknown=1",
        content=cat_jpeg,
        headers={"Content-Type": "image/jpeg", "Idempotency-Key": "k-1"},
    )
    assert response.status_code == 200, response.text
    job = client.get(f"/job/{response.json()['job_id']}").json()
    assert job["status"] == "queued" and job["priority"] == "high" and job["deadline_at"] is not None
    again = client.post(
        "/predict?priority=high&deadline_seconds=30&slow=always",
        content=cat_jpeg,
        headers={"Content-Type": "image/jpeg", "Idempotency-Key": "k-1"},
    )
    assert again.headers["Idempotent-Replayed"] == "true" and again.json()["job_id"] == response.json()["job_id"]
    test = client.get("/predict/test?priority=high", headers={"Idempotency-Key": "k-2"})
    assert test.status_code == 200 and client.get(f"/job/{test.json()['job_id']}").json()["priority"] == "high"

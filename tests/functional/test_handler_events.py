"""The Lambda handler exactly as deployed (functions/api/app.py) driven by real API Gateway events."""

from __future__ import annotations

import base64
import importlib.util
import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from tests.conftest import CAT_LABELS, EVENTS
from tests.lambda_context import LambdaContext
from twopass.config import REPO_ROOT, Settings
from twopass.queue.base import JobMessage

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def event(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    data.update(changes)
    return data


def job_event(predict_event: str, job_id: str) -> dict[str, Any]:
    """``GET /job/{id}`` from the same kind of API (and so the same caller) as ``predict_event``."""
    if predict_event.startswith("http_"):
        read = event("http_job.json", rawPath=f"/job/{job_id}", pathParameters={"job_id": job_id})
        read["requestContext"]["http"]["path"] = f"/job/{job_id}"
        return read
    return event("rest_job.json", path=f"/job/{job_id}", pathParameters={"job_id": job_id})


@pytest.fixture
def handler(aws: Settings) -> Handler:
    """A fresh import of the deployed handler module, reading the template's env from the fixture."""
    spec = importlib.util.spec_from_file_location("api_handler_under_test", REPO_ROOT / "functions/api/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda evt, ctx: module.handler(evt, ctx)


def body(response: dict[str, Any]) -> dict[str, Any]:
    text = response["body"]
    if response.get("isBase64Encoded"):
        text = base64.b64decode(text).decode()
    return json.loads(text)  # type: ignore[no-any-return]


def queued_messages(settings: Settings) -> list[JobMessage]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    out = sqs.receive_message(QueueUrl=settings.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [JobMessage.decode(m["Body"]) for m in out.get("Messages", [])]


def test_rest_health(handler: Handler) -> None:
    response = handler(event("rest_health.json"), LambdaContext())
    assert response["statusCode"] == 200
    assert body(response) == {"health": "ok"}


@pytest.mark.parametrize("name", ["rest_predict_binary.json", "rest_predict_json.json", "http_predict_binary.json"])
def test_predict_events_answer_fast_and_enqueue(handler: Handler, aws: Settings, name: str, cat_jpeg: bytes) -> None:
    response = handler(event(name), LambdaContext())
    assert response["statusCode"] == 200, response
    data = body(response)
    assert data["efficientnet-lite0"] in CAT_LABELS  # the seed's {"<fast model>": "<label>"} shape
    assert data["status"] == "queued"
    assert len(data["fast"]["top_k"]) == 5
    (message,) = queued_messages(aws)
    assert message.job_id == data["job_id"]
    assert message.image == cat_jpeg  # the worker gets the client's bytes, untouched
    # The record exists (written before the message was published), readable by the same caller.
    job = handler(job_event(name, data["job_id"]), LambdaContext())
    assert job["statusCode"] == 200
    assert body(job)[data["job_id"]] == {"prediction": None}
    assert body(job)["status"] == "queued"


def test_predict_test_event(handler: Handler) -> None:
    response = handler(event("rest_predict_test.json"), LambdaContext())
    assert response["statusCode"] == 200
    assert body(response)["efficientnet-lite0"] in CAT_LABELS


def test_request_id_travels_with_the_job(handler: Handler, aws: Settings) -> None:
    handler(event("http_predict_binary.json"), LambdaContext(aws_request_id="req-123"))
    (message,) = queued_messages(aws)
    assert message.context["request_id"] == "req-123"


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("rest_predict_bad_base64.json", 400, "invalid_base64"),
        ("http_predict_not_image.json", 400, "invalid_image"),
        ("rest_job.json", 404, "not_found"),
        ("http_job.json", 404, "not_found"),
    ],
)
def test_errors_are_json_4xx(handler: Handler, aws: Settings, name: str, status: int, code: str) -> None:
    response = handler(event(name), LambdaContext())
    assert response["statusCode"] == status
    data = body(response)
    assert data["error"] == code and data["detail"]
    assert queued_messages(aws) == []


def test_metadata_event_has_both_cards(handler: Handler) -> None:
    response = handler(event("http_metadata.json"), LambdaContext())
    assert response["statusCode"] == 200
    data = body(response)
    assert data["models"]["fast"]["name"] == "efficientnet-lite0"
    assert data["models"]["fast"]["preprocessing"]["input_size"] == 224
    assert data["models"]["slow"]["name"] == "efficientnet-lite2"
    assert data["data_type"] == "str"  # the seed's metadata fields stay


def test_another_api_key_cannot_read_the_job(handler: Handler) -> None:
    """API Gateway's key id is the owner: a job is 404 to every other key."""
    data = body(handler(event("rest_predict_test.json"), LambdaContext()))
    mine = job_event("rest_predict_test.json", data["job_id"])
    assert handler(mine, LambdaContext())["statusCode"] == 200
    theirs = job_event("rest_predict_test.json", data["job_id"])
    theirs["requestContext"]["identity"]["apiKeyId"] = "someone-else"
    answer = handler(theirs, LambdaContext())
    assert answer["statusCode"] == 404
    assert body(answer)["error"] == "not_found"


def test_docs_page_behind_a_stage_links_its_assets_under_the_stage(handler: Handler) -> None:
    """Through API Gateway the browser sees /dev/docs: the page must ask for /dev/openapi.json."""
    docs = event("rest_health.json", path="/docs", resource="/docs")
    docs["requestContext"] = {**docs["requestContext"], "path": "/dev/docs", "resourcePath": "/docs"}
    response = handler(docs, LambdaContext())
    assert response["statusCode"] == 200
    page = response["body"] if not response.get("isBase64Encoded") else base64.b64decode(response["body"]).decode()
    assert "/dev/openapi.json" in page
    assert "/dev/docs/swagger-ui-bundle.js" in page

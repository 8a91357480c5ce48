"""Client input never ends in a 5xx, tenants are isolated, backend errors never leak internals."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.models.runtime import Classifier
from twopass.queue.sqs import SqsPublisher

KEYS = ("tenant-a", "tenant-b")


def make_client(settings: Settings, classifier: Classifier) -> TestClient:
    service = TwopassService(
        settings, DynamoJobStore(settings.table_name), SqsPublisher(settings.queue_url), classifier
    )
    return TestClient(create_app(service), raise_server_exceptions=False)


@pytest.fixture
def client(aws: Settings, fast_classifier: Classifier) -> Iterator[TestClient]:
    with make_client(aws.replace(api_keys=",".join(KEYS)), fast_classifier) as c:
        yield c


def as_tenant(name: str, **more: str) -> dict[str, str]:
    return {"x-api-key": name, **more}


# -- request parsing: every malformed body is a 4xx JSON error ----------------------------------

HOSTILE_BODIES = {
    "deep nesting": b'{"image_data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "huge array": b'{"image_data": [' + b"1," * 200_000 + b"1]}",
    "many objects": b"[" + b"{}," * 5000 + b"{}]",
    "duplicate keys": b'{"image_data": "aGVsbG8=", "image_data": "aGVsbG8="}',
    "NaN": b'{"image_data": NaN}',
    "Infinity": b'{"image_data": "x", "callback_url": -Infinity}',
    "invalid UTF-8": b'{"image_data": "\xff\xfe"}',
    "truncated": b'{"image_data": "abc',
    "not an object": b"[1, 2, 3]",
    "a bare string": b'"hello"',
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_json_is_a_clean_4xx(client: TestClient, name: str) -> None:
    response = client.post(
        "/predict", content=HOSTILE_BODIES[name], headers=as_tenant("tenant-a", **{"Content-Type": "application/json"})
    )
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:200])
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert "Traceback" not in body["detail"]


def test_deep_nesting_is_refused_before_parsing(client: TestClient) -> None:
    response = client.post(
        "/predict",
        content=HOSTILE_BODIES["deep nesting"],
        headers=as_tenant("tenant-a", **{"Content-Type": "application/json"}),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


def test_body_without_content_length_is_capped(aws: Settings, fast_classifier: Classifier) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 65536  # 4 MiB in all, sent chunked with no Content-Length

    with make_client(aws.replace(max_image_bytes=1024), fast_classifier) as c:
        response = c.post("/predict", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_trailing_slash_answers_like_the_route(client: TestClient) -> None:
    plain = client.get("/health")
    slashed = client.get("/health/", follow_redirects=False)
    assert slashed.status_code == plain.status_code == 200
    assert slashed.json() == plain.json()
    predicted = client.get("/predict/test/", headers=as_tenant("tenant-a"), follow_redirects=False)
    assert predicted.status_code == 200 and predicted.json()["status"] == "queued"


# -- tenants ------------------------------------------------------------------------------------


def test_a_job_is_visible_to_its_owner_only(client: TestClient, cat_jpeg: bytes) -> None:
    job_id = client.post("/predict", content=cat_jpeg, headers=as_tenant("tenant-a")).json()["job_id"]
    assert client.get(f"/job/{job_id}", headers=as_tenant("tenant-a")).status_code == 200
    other = client.get(f"/job/{job_id}", headers=as_tenant("tenant-b"))
    assert other.status_code == 404
    assert other.json()["error"] == "not_found"


def test_idempotency_keys_are_scoped_to_their_owner(client: TestClient, cat_jpeg: bytes, photo: object) -> None:
    key = {"Idempotency-Key": "order-1", "Content-Type": "image/jpeg"}
    first = client.post("/predict", content=cat_jpeg, headers=as_tenant("tenant-a", **key))
    # Tenant B reusing A's key gets a job of its own, not A's; with another image, no 422 reveals the key.
    same_image = client.post("/predict", content=cat_jpeg, headers=as_tenant("tenant-b", **key))
    other_image = client.post(
        "/predict",
        content=photo("coffee.jpg"),  # type: ignore[operator]
        headers=as_tenant("tenant-b", **{**key, "Idempotency-Key": "order-2"}),
    )
    assert first.status_code == same_image.status_code == other_image.status_code == 200
    assert same_image.json()["job_id"] != first.json()["job_id"]
    assert "idempotent-replayed" not in same_image.headers
    replay = client.post("/predict", content=cat_jpeg, headers=as_tenant("tenant-a", **key))
    assert replay.json()["job_id"] == first.json()["job_id"]
    assert replay.headers["idempotent-replayed"] == "true"


# -- dependency failures ------------------------------------------------------------------------


def test_unreachable_backend_is_503_without_internal_details(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twopass.aws import reset_clients

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    reset_clients()
    settings = aws.replace(api_call_timeout_seconds=0.5, api_deadline_seconds=3)
    with TestClient(create_app(settings=settings), raise_server_exceptions=False) as c:
        response = c.post("/predict", content=cat_jpeg, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 503
    assert response.headers["retry-after"]
    body = response.json()
    assert body["error"] in ("dependency_unavailable", "enqueue_failed")
    assert not re.search(r"https?://|127\.0\.0\.1|amazonaws", body["detail"]), body["detail"]


# -- docs ---------------------------------------------------------------------------------------


def test_docs_are_served_offline_from_the_app(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert assets, page.text[:500]
    for url in assets:
        assert not url.startswith(("http://", "https://", "//")), f"/docs references an outside asset: {url}"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 500, url
        assert asset.headers["content-type"].split(";")[0] in (
            "text/css",
            "text/javascript",
            "application/javascript",
            "image/png",
        ), url


def test_openapi_declares_the_key_header_params_and_typed_bodies(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    (scheme,) = schemes.values()
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "x-api-key"}
    predict = schema["paths"]["/predict"]["post"]
    assert predict["security"], "POST /predict must require the key in the schema (Swagger's Authorize)"
    params = {(p["in"], p["name"]) for p in predict["parameters"]}
    assert {("header", "Idempotency-Key"), ("query", "callback_url")} <= params
    assert "security" not in schema["paths"]["/health"]["get"]
    components = schema["components"]["schemas"]
    for name in ("PredictResponse", "JobResponse", "HealthAllResponse", "MetadataResponse", "ModelResult"):
        props = components[name]["properties"]
        assert all(p.get("description") for p in props.values()), name
    assert "fast model" in components["PredictResponse"]["description"]

"""Property-based fuzzing of what clients put in a body, below what a schema can describe.

Arbitrary JSON (deeply nested, huge arrays, every scalar), JSON text with duplicate keys and
NaN/Infinity, and raw bytes (invalid UTF-8 included), sent as JSON and as images: every answer is a
4xx (or a 200 for a body that happens to be valid) with the JSON error shape — never a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import template_in_moto
from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.models.runtime import Classifier
from twopass.queue.sqs import SqsPublisher

pytestmark = pytest.mark.slow
HEADERS = {"x-api-key": "fuzz-key"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


texts = st.one_of(
    json_values.map(json.dumps),
    json_values.map(lambda v: json.dumps({"image_data": v})),
    st.integers(min_value=1, max_value=20_000).map(lambda d: '{"image_data": ' + "[" * d + "]" * d + "}"),
    st.integers(min_value=1, max_value=5_000).map(lambda d: '{"a": ' * d + "1" + "}" * d),
    st.integers(min_value=1, max_value=100_000).map(lambda n: '{"image_data": [' + "0," * n + "0]}"),
    st.sampled_from(["NaN", "Infinity", "-Infinity"]).map(lambda c: '{"image_data": ' + c + "}"),
    st.text(max_size=10).map(lambda k: '{"image_data": "x", "image_data": ' + json.dumps(k) + "}"),
)


@pytest.fixture(scope="module")
def client(fast_classifier: Classifier) -> Iterator[TestClient]:
    with template_in_moto() as config:
        config = config.replace(api_keys="fuzz-key")
        service = TwopassService(
            config, DynamoJobStore(config.table_name), SqsPublisher(config.queue_url), fast_classifier
        )
        with TestClient(create_app(service, emit_metrics=False), raise_server_exceptions=False) as c:
            yield c


def check(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert set(response.json()) == {"error", "detail"}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=texts)
def test_any_json_text_is_never_a_5xx(client: TestClient, body: str) -> None:
    check(client.post("/predict", content=body.encode(), headers={**HEADERS, "Content-Type": "application/json"}))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(min_size=1, max_size=4096), ctype=st.sampled_from(["application/json", "image/jpeg", ""]))
def test_any_bytes_are_never_a_5xx(client: TestClient, body: bytes, ctype: str) -> None:
    headers = {**HEADERS, "Content-Type": ctype} if ctype else HEADERS
    check(client.post("/predict", content=body, headers=headers))

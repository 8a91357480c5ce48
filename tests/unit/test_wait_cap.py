"""Waiting reads cannot take the account's Lambda concurrency: under Lambda, ``GET /job/{id}?wait=``
is cut to ``wait_concurrency / api_rate_limit`` seconds, whatever the client asks for."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from twopass.api.app import create_app
from twopass.api.routes.jobs import WAIT_MAX, wait_limit
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.queue.memory import MemoryQueue


@pytest.mark.parametrize(
    ("concurrency", "rate", "longest"),
    [(0, 50, WAIT_MAX), (200, 0, WAIT_MAX), (200, 50, 4.0), (100, 200, 0.5), (10_000, 50, WAIT_MAX)],
)
def test_the_longest_wait_holds_at_most_the_concurrency_at_the_full_rate(
    concurrency: int, rate: float, longest: float
) -> None:
    limit = wait_limit(Settings(wait_concurrency=concurrency, api_rate_limit=rate))
    assert limit == pytest.approx(longest)
    if concurrency and rate:
        assert rate * limit <= concurrency


class LambdaContext:
    """What Mangum puts in the ASGI scope as ``aws.context``: the invocation's remaining time."""

    def get_remaining_time_in_millis(self) -> int:
        return 25_000


def as_lambda(app: Any) -> Any:
    """The app as Mangum runs it: each request's scope carries the Lambda context."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "aws.context": LambdaContext()}
        await app(scope, receive, send)

    return wrapped


def timed_wait(app: Any, cat_jpeg: bytes, asked: float) -> tuple[str, float]:
    with TestClient(app) as client:
        job_id = client.post("/predict", content=cat_jpeg, headers={"Content-Type": "image/jpeg"}).json()["job_id"]
        started = time.monotonic()
        waited = client.get(f"/job/{job_id}", params={"wait": asked})
        elapsed = time.monotonic() - started
    assert waited.status_code == 200
    return waited.json()["status"], elapsed


def test_under_lambda_a_wait_past_the_cap_answers_the_job_as_it_is_when_the_cap_ends(
    fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    # 1 execution at 2 requests/s: waits of at most 0.5 s, though the client asks for 10.
    settings = Settings(wait_concurrency=1, api_rate_limit=2)
    service = TwopassService(settings, MemoryJobStore(), MemoryQueue(), fast_classifier)
    status, elapsed = timed_wait(as_lambda(create_app(service)), cat_jpeg, 10)
    assert status == "queued"  # no worker: still queued when the cap ran out
    assert 0.4 <= elapsed < 2.0, elapsed


def test_outside_lambda_a_wait_holds_no_execution_and_is_not_cut(fast_classifier: Classifier, cat_jpeg: bytes) -> None:
    # The local stack (uvicorn) holds a wait as a coroutine: the template's cap does not shorten it.
    settings = Settings(wait_concurrency=1, api_rate_limit=2)
    service = TwopassService(settings, MemoryJobStore(), MemoryQueue(), fast_classifier)
    status, elapsed = timed_wait(create_app(service), cat_jpeg, 1.5)
    assert status == "queued"
    assert elapsed >= 1.5, elapsed

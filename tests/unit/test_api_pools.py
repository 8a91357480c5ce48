"""The API's thread pools: sized by the documented rules, and the backend calls' trips where they go."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import threading
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from twopass.api.app import create_app
from twopass.api.context import ApiContext
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.queue.base import JobMessage
from twopass.queue.memory import MemoryQueue


@pytest.mark.parametrize(
    ("cores", "intra_op", "inference", "io"),
    [(2, 0, 3, 6), (2, 1, 3, 6), (1, 1, 2, 4), (8, 1, 9, 18), (8, 4, 3, 6), (16, 0, 17, 34)],
)
def test_pool_sizes_follow_the_rules(
    monkeypatch: pytest.MonkeyPatch, cores: int, intra_op: int, inference: int, io: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    settings = Settings(intra_op_threads=intra_op)
    assert (settings.inference_threads, settings.io_pool_threads) == (inference, io)
    context = ApiContext(settings, emit_metrics=False)
    assert context.inference_pool._max_workers == inference
    assert context.io_pool._max_workers == io


def test_set_sizes_win_over_the_rules() -> None:
    settings = Settings(inference_concurrency=5, io_threads=7)
    assert (settings.inference_threads, settings.io_pool_threads) == (5, 7)


class _NetworkQueue(MemoryQueue):
    """An in-memory queue that says it blocks, as a networked one does: its calls go to the I/O pool."""

    blocking = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def publish(self, message: JobMessage) -> Any:
        self.threads.append(threading.current_thread().name)
        return super().publish(message)


def _app(classifier: Classifier, blocking: bool) -> tuple[FastAPI, _NetworkQueue]:
    """The app over an in-memory store and a queue that says it blocks, or not."""
    queue = _NetworkQueue()
    queue.blocking = blocking
    return create_app(TwopassService(Settings(), MemoryJobStore(), queue, classifier), emit_metrics=False), queue


@pytest.mark.parametrize("blocking", [False, True])
def test_backend_calls_run_on_the_inference_thread_only_when_no_backend_blocks(
    fast_classifier: Classifier, cat_jpeg: bytes, blocking: bool
) -> None:
    app, queue = _app(fast_classifier, blocking)
    with TestClient(app) as client:
        body = {"image_data": base64.b64encode(cat_jpeg).decode()}
        assert client.post("/predict", json=body).status_code == 200
    assert app.state.twopass.inline_backends is (not blocking)
    (thread,) = queue.threads
    assert thread.startswith("aws" if blocking else "infer")
    assert len(queue) == 1  # queued either way


class _AtOnce(concurrent.futures.Executor):
    """A pool whose work is done before ``submit`` returns: the extreme of a thread that is quicker
    than the caller (a stalled event loop, a debugger's or profiler's pause)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


@pytest.mark.parametrize("blocking", [False, True])
def test_a_prediction_stands_when_the_model_ends_before_the_request_has_started_waiting(
    fast_classifier: Classifier, cat_jpeg: bytes, blocking: bool
) -> None:
    app, queue = _app(fast_classifier, blocking)
    app.state.twopass.inference_pool = _AtOnce()
    with TestClient(app, raise_server_exceptions=False) as client:
        body = {"image_data": base64.b64encode(cat_jpeg).decode()}
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        assert client.get(f"/job/{response.json()['job_id']}").json()["status"] == "queued"
    assert len(queue) == 1

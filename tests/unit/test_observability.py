"""Metrics as CloudWatch EMF blobs from the API and the worker, with the documented names."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.jobs.base import JobRecord, new_job_id
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.observability.metrics import NAMESPACE, Metric, MetricsSink
from twopass.queue.base import JobMessage
from twopass.queue.memory import MemoryQueue
from twopass.worker.events import ObservedEvents
from twopass.worker.runner import Worker


def emf_blobs(text: str) -> list[dict[str, Any]]:
    blobs = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blobs.append(json.loads(line))
    return blobs


def metric_names(blobs: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for blob in blobs:
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == NAMESPACE
            names.update(m["Name"] for m in directive["Metrics"])
    return names


@pytest.fixture(autouse=True)
def _metrics_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)


def test_api_emits_fast_path_metrics(
    fast_classifier: Classifier, cat_jpeg: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    service = TwopassService(Settings(), MemoryJobStore(), MemoryQueue(), fast_classifier)
    with TestClient(create_app(service)) as client:
        assert client.post("/predict", json={"image_data": base64.b64encode(cat_jpeg).decode()}).status_code == 200
    blobs = emf_blobs(capsys.readouterr().out)
    assert {Metric.FAST_INFERENCE_MS, Metric.ENQUEUE_MS, Metric.JOBS_ACCEPTED} <= metric_names(blobs)
    (blob,) = blobs
    assert blob["service"] == "twopass-api"
    values = blob[Metric.FAST_INFERENCE_MS]
    assert all(v > 0 for v in (values if isinstance(values, list) else [values]))


def test_worker_emits_batch_and_outcome_metrics(
    slow_classifier: Classifier, cat_jpeg: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    queue, store = MemoryQueue(), MemoryJobStore()
    events = ObservedEvents(MetricsSink("twopass-worker"))
    settings = Settings().replace(poll_wait_seconds=0.1, heartbeat_seconds=5)
    worker = Worker(slow_classifier, queue, store, settings, events=events)
    ids = []
    for image in (cat_jpeg, b"not an image"):
        job_id = new_job_id()
        store.create(JobRecord(job_id=job_id))
        queue.publish(JobMessage(job_id=job_id, image=image))
        ids.append(job_id)
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all((r := store.get(j)) and r.final for j in ids):
        time.sleep(0.05)
    events.dead_lettered(2)
    worker.stop()
    thread.join(30)
    names = metric_names(emf_blobs(capsys.readouterr().out))
    expected = {
        Metric.SLOW_INFERENCE_MS,
        Metric.BATCH_SIZE,
        Metric.QUEUE_WAIT_MS,
        Metric.JOBS_SUCCEEDED,
        Metric.JOBS_FAILED,
    }
    assert expected | {Metric.DEAD_LETTERED} <= names


def test_emf_blobs_stay_whole_lines_while_other_threads_log(capsys: pytest.CaptureFixture[str]) -> None:
    # The worker logs JSON lines from several threads onto the same stdout the EMF blobs go to; a blob
    # written in two pieces (the text, then its newline) lets a log line in between, and CloudWatch
    # then parses neither. A tiny switch interval makes that interleaving likely if it can happen.
    import logging
    import sys

    sink = MetricsSink("twopass-worker")
    log = logging.getLogger("twopass.test.interleave")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter('{"message": "%(message)s"}'))
    log.addHandler(handler)
    log.propagate = False
    rounds = 3000
    stop = threading.Event()

    def logging_thread() -> None:
        while not stop.is_set():
            log.warning("another thread")

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=logging_thread)
    thread.start()
    try:
        for i in range(rounds):
            sink.add(Metric.BATCH_SIZE, i)
            sink.flush()
            sink.add_dimensioned(Metric.SLOW_ANSWERS, 1, {"model_version": "v1"})
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(previous)
        log.removeHandler(handler)

    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    parsed = [json.loads(line) for line in lines]  # every line one JSON document
    assert sum(1 for p in parsed if "_aws" in p) == 2 * rounds
    assert any(p.get("message") == "another thread" for p in parsed)

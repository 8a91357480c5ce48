"""The API's metrics and request logs, counted, in both of its telemetry modes.

On Lambda (``AWS_LAMBDA_FUNCTION_NAME`` set) each request's EMF blob and log line are written before
it answers: the sandbox may be frozen right after. In a long-running server they cost the request
nothing but a list append and a queue put: a background thread prints the metrics every
``metrics_flush_seconds`` (and at shutdown), another writes the log records. Either way operators get
every metric name and every value, and one ``job queued`` line per job.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.observability.metrics import MAX_VALUES, Metric, MetricsSink
from twopass.queue.memory import MemoryQueue

#: The metrics the requests below make the API emit: each of them must reach the output.
EXPECTED = {
    Metric.FAST_INFERENCE_MS,
    Metric.ENQUEUE_MS,
    Metric.JOBS_ACCEPTED,
    Metric.FAST_ONLY,
    Metric.JOBS_CANCELLED,
    Metric.BATCH_ITEMS,
    Metric.BATCH_ITEMS_REFUSED,
}


def blobs(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{") and '"_aws"' in line]


def values(found: list[dict[str, Any]], metric: Metric) -> list[float]:
    """Every value of ``metric`` across ``found``, after checking each blob declares what it carries."""
    out: list[float] = []
    for blob in found:
        (directive,) = blob["_aws"]["CloudWatchMetrics"]
        declared = {m["Name"] for m in directive["Metrics"]}
        assert declared == {k for k in blob if k in {m.value for m in Metric}}, "declared and carried differ"
        assert all(len(blob[name]) <= MAX_VALUES for name in declared)
        out += blob.get(metric.value, [])
    return out


class Output:
    """What the API printed, as capsys sees it: stdout (EMF, JSON logs) and stderr (text logs)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys, self.out, self.err = capsys, "", ""

    def read(self) -> tuple[str, str]:
        captured = self.capsys.readouterr()
        self.out += captured.out
        self.err += captured.err
        return self.out, self.err

    def until(self, predicate: Callable[[str, str], bool], timeout: float = 10.0) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while not predicate(*self.read()):
            if time.monotonic() > deadline:
                raise AssertionError(f"not written in {timeout} s: {self.read()}")
            time.sleep(0.02)
        return self.read()


@pytest.fixture
def output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Output:
    """A fresh logging set-up for the app to make (undone after), capsys reading it, metrics on."""
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)
    log = logging.getLogger("twopass")
    monkeypatch.setattr(log, "handlers", [])
    for attr in ("propagate", "level", "_twopass_configured"):
        monkeypatch.setattr(log, attr, getattr(log, attr, False), raising=False)
    log._twopass_configured = False  # type: ignore[attr-defined]
    return Output(capsys)


def exercise(client: TestClient, cat_jpeg: bytes, jobs: int) -> None:
    """``jobs`` queued jobs, one ``slow: never`` answer, one cancel, one batch of two with one refused."""
    body = {"image_data": base64.b64encode(cat_jpeg).decode()}
    ids = []
    for _ in range(jobs):
        response = client.post("/predict", json=body)
        assert response.status_code == 200
        ids.append(response.json()["job_id"])
    assert client.post("/predict?slow=never", content=cat_jpeg, headers={"Content-Type": "image/jpeg"}).is_success
    assert client.delete(f"/job/{ids[0]}").status_code == 200
    batch = client.post("/batches", json={"items": [body, {"image_data": "bm90IGFuIGltYWdl"}]})
    assert batch.status_code == 200


def log_lines(out: str, err: str) -> int:
    return sum(1 for line in (out + err).splitlines() if "job queued" in line and "_aws" not in line)


def service(fast_classifier: Classifier, **settings: Any) -> TwopassService:
    return TwopassService(Settings(**settings), MemoryJobStore(), MemoryQueue(), fast_classifier)


def test_a_server_prints_nothing_per_request_and_everything_at_the_flush(
    fast_classifier: Classifier, cat_jpeg: bytes, output: Output
) -> None:
    jobs = MAX_VALUES + 5  # more values than one blob takes
    app = create_app(service(fast_classifier, metrics_flush_seconds=60.0))
    with TestClient(app) as client:
        exercise(client, cat_jpeg, jobs)
        out, _ = output.read()
        assert blobs(out) == []  # within the period, requests print no metrics
        out, err = output.until(lambda out, err: log_lines(out, err) == jobs)
    out, err = output.read()  # the shutdown printed what was pending
    found = blobs(out)
    assert {Metric(name) for blob in found for name in blob if name in {m.value for m in Metric}} == EXPECTED
    assert len(found) == 2  # 106 values of FastInferenceMs: two blobs, not 108 documents
    assert len(values(found, Metric.FAST_INFERENCE_MS)) == jobs + 1 + 1  # the jobs, slow: never, the batch item
    assert len(values(found, Metric.ENQUEUE_MS)) == jobs
    assert sum(values(found, Metric.JOBS_ACCEPTED)) == jobs + 1
    assert values(found, Metric.FAST_ONLY) == [1.0] and values(found, Metric.JOBS_CANCELLED) == [1.0]
    assert values(found, Metric.BATCH_ITEMS) == [2.0] and values(found, Metric.BATCH_ITEMS_REFUSED) == [1.0]
    assert all(blob["service"] == "twopass-api" for blob in found)
    assert log_lines(out, err) == jobs  # one request log line per job, written by the listener thread


def test_a_server_flushes_every_period_while_it_runs(
    fast_classifier: Classifier, cat_jpeg: bytes, output: Output
) -> None:
    app = create_app(service(fast_classifier, metrics_flush_seconds=0.2))
    with TestClient(app) as client:
        exercise(client, cat_jpeg, 3)
        out, _ = output.until(lambda out, _: Metric.BATCH_ITEMS.value in out)  # no shutdown needed
        assert {Metric(n) for b in blobs(out) for n in b if n in {m.value for m in Metric}} == EXPECTED


def test_on_lambda_each_request_writes_its_blob_and_log_line_before_it_answers(
    fast_classifier: Classifier, cat_jpeg: bytes, output: Output, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "twopass-ApiFunction")
    app = create_app(service(fast_classifier, metrics_flush_seconds=60.0), emit_metrics=True)
    body = {"image_data": base64.b64encode(cat_jpeg).decode()}
    client = TestClient(app)  # no lifespan: Mangum runs none either
    for n in range(1, 4):
        assert client.post("/predict", json=body).status_code == 200
        out, err = output.read()  # no waiting: written before the answer
        found = blobs(out)
        assert len(found) == n
        assert {m["Name"] for m in found[-1]["_aws"]["CloudWatchMetrics"][0]["Metrics"]} == {
            Metric.FAST_INFERENCE_MS, Metric.ENQUEUE_MS, Metric.JOBS_ACCEPTED,
        }  # fmt: skip
        assert log_lines(out, err) == n
    exercise(client, cat_jpeg, 1)
    out, _ = output.read()
    assert {Metric(n) for b in blobs(out) for n in b if n in {m.value for m in Metric}} == EXPECTED


def test_a_periodic_sink_splits_values_at_the_emf_limit_and_loses_none(capsys: pytest.CaptureFixture[str]) -> None:
    sink = MetricsSink("twopass-api", flush_every=3600)
    try:
        for i in range(2 * MAX_VALUES + 1):
            sink.add(Metric.FAST_INFERENCE_MS, i)
        sink.add(Metric.JOBS_ACCEPTED, 1)
        sink.flush()  # a request's end: nothing printed in periodic mode
        assert blobs(capsys.readouterr().out) == []
    finally:
        sink.close()
    found = blobs(capsys.readouterr().out)
    assert len(found) == 3
    assert values(found, Metric.FAST_INFERENCE_MS) == [float(i) for i in range(2 * MAX_VALUES + 1)]
    assert values(found, Metric.JOBS_ACCEPTED) == [1.0]

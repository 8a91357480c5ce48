"""A model asked for a provider it cannot get does not quietly serve elsewhere.

This machine has no GPU and the development environment's onnxruntime is the CPU build, so a
session asked for CUDA really falls back here: the classifier must refuse, the worker must exit
non-zero with one line saying what is missing, the preflight must fail; with fallback allowed the
worker serves, reports both providers, the metric says so and ``/health/all`` says ``degraded``.
(tests/artefacts runs the same against the GPU wheels, where the missing piece is the driver.)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.unit.test_api import make_client
from twopass.config import Settings
from twopass.exceptions import ProviderUnavailableError
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.observability.metrics import MetricsSink
from twopass.queue.memory import MemoryQueue
from twopass.worker import main as worker_main
from twopass.worker.events import ObservedEvents
from twopass.worker.preflight import preflight
from twopass.worker.runner import Worker

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
SLOW = Settings().slow_model


def test_providers_parse_with_optional_marks_and_fallback() -> None:
    settings = Settings.from_env({"TWOPASS_PROVIDERS": "cuda?, cpu"})
    assert settings.providers == (f"{CUDA}?", CPU)
    strict = Settings.from_env({"TWOPASS_PROVIDERS": "cuda,cpu"})
    assert strict.session_providers == (CUDA, CPU)
    relaxed = Settings.from_env({"TWOPASS_PROVIDERS": "cuda,cpu", "TWOPASS_ALLOW_CPU_FALLBACK": "1"})
    assert relaxed.allow_cpu_fallback and relaxed.session_providers == (f"{CUDA}?", f"{CPU}?")


def test_a_required_provider_that_does_not_load_is_a_load_failure() -> None:
    with pytest.raises(ProviderUnavailableError) as caught:
        Classifier(Path(SLOW), providers=(CUDA, CPU))
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(f"{CUDA} was required but the session runs on {CPU}: ")
    assert "CPU build" in line and "onnxruntime-gpu" in line  # what is missing, and what brings it


@pytest.mark.parametrize(("providers", "allow"), [((f"{CUDA}?", CPU), False), ((CUDA, CPU), True)])
def test_optional_or_allowed_fallback_serves_and_says_where(providers: tuple[str, ...], allow: bool) -> None:
    classifier = Classifier.from_location(SLOW, providers=providers, allow_fallback=allow)
    assert classifier.providers[0] == CPU
    assert classifier.requested_provider == CUDA
    assert not classifier.serving_as_asked


def test_worker_asked_for_cuda_exits_non_zero_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in {"TWOPASS_PROVIDERS": "cuda,cpu", "TWOPASS_QUEUE_URL": "http://127.0.0.1:9/q",
                       "TWOPASS_TABLE_NAME": "jobs", "TWOPASS_SLOW_MODEL": SLOW}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    log = logging.getLogger("twopass")  # main() sets the process's logging up: undone after the test
    monkeypatch.setattr(log, "handlers", list(log.handlers))
    for attr in ("propagate", "level", "_twopass_configured"):
        monkeypatch.setattr(log, attr, getattr(log, attr, False), raising=False)
    started = time.monotonic()
    assert worker_main.main([]) == worker_main.START_FAILED != 0
    assert time.monotonic() - started < 30  # before any queue is touched
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"twopass-worker cannot start: {CUDA} was required but the session runs on {CPU}")


def test_preflight_on_cpu_passes_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert preflight(Settings(providers=(CPU,), max_batch_size=2), out) == 0
    report = dict(line.split(":", 1) for line in out.getvalue().splitlines())
    assert report["provider"].strip() == CPU
    assert report["device"].strip().startswith("CPU")
    assert report["warm-up batch"].strip().startswith("2 images in ")
    assert "onnxruntime" in report


def test_preflight_fails_when_cuda_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert preflight(Settings(providers=(CUDA, CPU), max_batch_size=2), out) == 1
    assert "built for CUDA" in out.getvalue()  # the versions found are printed before the failure
    assert f"preflight failed: {CUDA} was required" in capsys.readouterr().err


# ---------------------------------------------------------------- what the worker reports


@pytest.fixture(scope="module")
def fallback_classifier() -> Classifier:
    return Classifier.from_location(SLOW, providers=(CUDA, CPU), allow_fallback=True)


@contextlib.contextmanager
def _running(classifier: Classifier, store: MemoryJobStore, events: ObservedEvents) -> Iterator[Worker]:
    settings = Settings(heartbeat_seconds=0.05, poll_wait_seconds=1, dlq_sweep_seconds=0, reconcile_seconds=0)
    worker = Worker(
        classifier, MemoryQueue(visibility=5), store, settings, worker_id="gpu-host-4242-abc", events=events
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)


def test_worker_reports_what_it_serves_on_and_what_was_asked(
    fallback_classifier: Classifier, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    store = MemoryJobStore()
    with _running(fallback_classifier, store, ObservedEvents(MetricsSink(service="twopass-worker"))):
        deadline = time.monotonic() + 10
        while not store.workers() and time.monotonic() < deadline:
            time.sleep(0.02)
        (beat,) = store.workers()
        assert (beat.info["provider"], beat.info["provider_requested"]) == (CPU, CUDA)
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"ServingProvider"' in line]
    assert blobs, "no ServingProvider metric"
    # The dimensions the "GPU task serving on CPU" alarm in template.yaml watches.
    assert {k: blobs[0][k] for k in ("service", "provider", "requested")} == {
        "service": "twopass-worker", "provider": CPU, "requested": CUDA,
    }  # fmt: skip
    assert blobs[0]["ServingProvider"] in (1, [1])


# ---------------------------------------------------------------- /health/all


@pytest.fixture
def api(aws: Settings, fast_classifier: Classifier) -> Iterator[TestClient]:
    with make_client(aws, fast_classifier) as c:
        yield c


def _beat(aws: Settings, worker_id: str, provider: str, requested: str) -> None:
    DynamoJobStore(aws.table_name).beat(
        worker_id,
        {"host": "ip-10-0-1-23.ec2.internal", "pid": 31337, "model": "efficientnet-lite2", "provider": provider,
         "provider_requested": requested, "succeeded": 98765, "model_card": {"version": "0.1.0-fp32", "sha256": "ab"}},
    )  # fmt: skip


def test_health_all_is_degraded_while_a_worker_serves_elsewhere(api: TestClient, aws: Settings) -> None:
    _beat(aws, "ip-10-0-1-23-4242-aa11", CUDA, CUDA)
    assert api.get("/health/all").json()["status"] == "ok"
    _beat(aws, "ip-10-0-1-24-777-bb22", CPU, CUDA)
    data = api.get("/health/all").json()
    assert data["status"] == "degraded"
    worker = data["backends"]["worker"]
    assert worker["status"] == "degraded" and worker["alive"] == 2
    assert "1 of 2 worker(s)" in worker["detail"]
    assert data["efficientnet-lite2"] == "degraded"


def test_health_all_tells_no_caller_where_workers_run(api: TestClient, aws: Settings) -> None:
    _beat(aws, "ip-10-0-1-23-4242-aa11", CUDA, CUDA)
    body = api.get("/health/all").text
    for secret in ("ip-10-0-1-23", "31337", "98765", '"host"', '"pid"', '"succeeded"'):
        assert secret not in body, secret
    (worker,) = json.loads(body)["backends"]["worker"]["workers"]
    assert set(worker) == {"id", "age_s", "model", "provider", "provider_requested", "model_version", "model_sha256"}
    assert len(worker["id"]) == 12  # opaque, stable: the same worker keeps the same id
    assert api.get("/health/all").json()["backends"]["worker"]["workers"][0]["id"] == worker["id"]

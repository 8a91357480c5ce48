"""No half-submitted job: a fault at any step of ``POST /predict``'s commit (record, publish, the
Idempotency-Key's answer) ends with the job queued with its message and its answer kept, or failed
with its key released — never a ``queued`` job without a message, never a key stuck answering 409.

Each fault is real and sits at the backend's edge (the job store's or the queue's method, on both
twins: DynamoDB and SQS in moto, and the in-memory ones); ``submit``, the intake and the store's
logic run as they do in service. A fault hits the first call only, as a stall or a dropped
connection does: the clean-up's own calls get through.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient

from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.exceptions import DependencyError, DependencyTimeoutError
from twopass.jobs.base import JobStatus, JobStore
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.queue.base import JobPublisher
from twopass.queue.memory import MemoryQueue
from twopass.queue.sqs import SqsPublisher

#: The request's deadline here: short, so a stalled step overruns it quickly, yet long enough for
#: the steps before the faulty one on a machine the whole test suite shares (1 s was not, once).
DEADLINE = 1.5
#: A stall well past the deadline; the stalled call then lands (a slow backend, not a dead one).
STALL = 2.5
#: How long the clean-up may take after the 503 before the test calls it stuck.
SETTLE = 5.0
KEY = {"Idempotency-Key": "order-7", "Content-Type": "image/jpeg"}


@dataclass
class Backends:
    store: JobStore
    publisher: JobPublisher
    messages: Callable[[], int]


@pytest.fixture(params=["moto", "memory"])
def backends(request: pytest.FixtureRequest) -> Iterator[Backends]:
    if request.param == "memory":
        queue = MemoryQueue()
        yield Backends(MemoryJobStore(), queue, lambda: len(queue))
        return
    settings: Settings = request.getfixturevalue("aws")
    sqs = boto3.client("sqs", region_name="us-east-1")

    def messages() -> int:
        attrs = sqs.get_queue_attributes(
            QueueUrl=settings.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    yield Backends(DynamoJobStore(settings.table_name), SqsPublisher(settings.queue_url), messages)


@pytest.fixture
def service(backends: Backends, fast_classifier: Classifier) -> TwopassService:
    # The cascade off: every job goes to the queue (the publish step is always there).
    settings = Settings(api_deadline_seconds=DEADLINE, cascade_threshold=0.0, result_cache=False)
    return TwopassService(settings, backends.store, backends.publisher, fast_classifier)


# -- faults: each wraps one backend method, for its first call ------------------------------------


def inject(monkeypatch: pytest.MonkeyPatch, target: object, name: str, fault: str) -> list[float]:
    """Make ``target.name``'s first call fail as ``fault`` says; returns when it was called (monotonic).

    ``error``: refused, nothing written. ``lost``: written, but the answer never comes back (a timeout
    after the write). ``stall``: answers only after :data:`STALL` s, then writes. ``late``: times out at
    once, and the write lands :data:`STALL` s later (a request the backend had queued).
    """
    real = getattr(target, name)
    called: list[float] = []

    def faulty(*args: Any, **kwargs: Any) -> Any:
        if called:
            return real(*args, **kwargs)
        called.append(time.monotonic())
        if fault == "error":
            raise DependencyError(f"{name} refused")
        if fault == "lost":
            real(*args, **kwargs)
            raise DependencyTimeoutError(f"{name}: no answer")
        if fault == "late":
            threading.Timer(STALL, quietly, (real, *args), kwargs).start()
            raise DependencyTimeoutError(f"{name}: no answer")
        assert fault == "stall"
        time.sleep(STALL)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, faulty)
    return called


def quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """A late write: refused, as it should be, when the clean-up got there first."""
    try:
        call(*args, **kwargs)
    except Exception:
        return


# -- what every outcome must be -----------------------------------------------------------------


def settled(service: TwopassService, backends: Backends, job_id: str) -> JobStatus:
    """The job's status once nothing is half-made: queued with its message, or failed (with a reason)."""
    deadline = time.monotonic() + SETTLE
    while True:
        record = service.store.get(job_id)
        if record is not None and record.status is JobStatus.FAILED:
            assert record.error, "an abandoned job says why"
            return record.status
        if record is not None and record.status is JobStatus.QUEUED and backends.messages() >= 1:
            return record.status
        assert time.monotonic() < deadline, f"job {job_id} half-made: {record} with {backends.messages()} messages"
        time.sleep(0.05)


def the_job(service: TwopassService) -> str:
    """The one job the refused request recorded (the key's claim names it while it is held)."""
    records, _ = service.store.list_jobs("anonymous")
    assert len(records) <= 1, records
    return records[0].job_id if records else ""


def key_is_free_again(client: TestClient, cat_jpeg: bytes, backends: Backends) -> str:
    """The refused request's key works again: a retry gets a job of its own, queued with its message."""
    deadline = time.monotonic() + SETTLE
    while True:
        retried = client.post("/predict", content=cat_jpeg, headers=KEY)
        if retried.status_code == 200:
            break
        # 409 only while the clean-up runs; 503 when this machine was too busy for the deadline (the
        # retry is then cleaned up in turn, and the loop tries again).
        assert retried.status_code in (409, 503), retried.text
        assert time.monotonic() < deadline, "the key stayed in use after its request was refused"
        time.sleep(0.1)
    assert "idempotent-replayed" not in retried.headers
    job_id: str = retried.json()["job_id"]
    assert retried.json()["status"] == "queued"
    return job_id


def refused(client: TestClient, cat_jpeg: bytes) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    response = client.post("/predict", content=cat_jpeg, headers=KEY)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    body: dict[str, Any] = response.json()
    return body, elapsed


# -- the steps --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["error", "lost", "stall", "late"])
def test_a_fault_at_the_record_write_leaves_no_job_and_frees_the_key(
    service: TwopassService, backends: Backends, cat_jpeg: bytes, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    called = inject(monkeypatch, backends.store, "create", fault)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        _, elapsed = refused(client, cat_jpeg)
        assert called, "the fault was not reached"
        assert elapsed < DEADLINE + 1.0, f"503 after {elapsed:.2f} s"
        if fault in ("stall", "late"):
            time.sleep(STALL)  # let the stalled write land (or try to) before looking
        job_id = the_job(service)
        if job_id:  # written (or written failed in its place): it must have ended
            assert settled(service, backends, job_id) is JobStatus.FAILED
        assert backends.messages() == 0, "nothing was published for a refused request"
        again = key_is_free_again(client, cat_jpeg, backends)
        assert settled(service, backends, again) is JobStatus.QUEUED
        assert backends.messages() == 1


@pytest.mark.parametrize("fault", ["error", "lost", "stall", "late"])
def test_a_fault_at_the_publish_ends_the_job_failed_and_frees_the_key(
    service: TwopassService, backends: Backends, cat_jpeg: bytes, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    called = inject(monkeypatch, backends.publisher, "publish", fault)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        _, elapsed = refused(client, cat_jpeg)
        assert called
        assert elapsed < DEADLINE + 1.0, f"503 after {elapsed:.2f} s"
        job_id = the_job(service)
        assert settled(service, backends, job_id) is JobStatus.FAILED
        if fault in ("stall", "late"):
            time.sleep(STALL)  # the message lands after all: its job stays failed (the worker drops it)
            assert service.store.get(job_id).status is JobStatus.FAILED  # type: ignore[union-attr]
        again = key_is_free_again(client, cat_jpeg, backends)
        assert again != job_id
        assert settled(service, backends, again) is JobStatus.QUEUED


@pytest.mark.parametrize("fault", ["error", "lost", "stall", "late"])
def test_a_fault_at_the_idempotency_answer_ends_the_job_failed_and_frees_the_key(
    service: TwopassService, backends: Backends, cat_jpeg: bytes, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    called = inject(monkeypatch, backends.store, "remember_response", fault)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        _, elapsed = refused(client, cat_jpeg)
        assert called
        assert elapsed < DEADLINE + 1.0, f"503 after {elapsed:.2f} s"
        job_id = the_job(service)
        assert settled(service, backends, job_id) is JobStatus.FAILED
        if fault in ("stall", "late"):
            time.sleep(STALL)  # the late answer finds the key released: it does not bring it back
        again = key_is_free_again(client, cat_jpeg, backends)
        assert again != job_id
        assert settled(service, backends, again) is JobStatus.QUEUED


def test_a_job_a_worker_took_before_the_clean_up_runs_on_and_its_key_replays_it(
    service: TwopassService, backends: Backends, cat_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publish landed and a worker started the job, but the answer's bookkeeping failed: the job
    cannot be failed any more, so the key keeps the answer and a retry gets that job, not a second."""
    real_publish = backends.publisher.publish

    def publish_and_start(message: Any) -> Any:
        sent = real_publish(message)
        assert backends.store.start(message.job_id, "worker-1") is not None
        return sent

    monkeypatch.setattr(backends.publisher, "publish", publish_and_start)
    inject(monkeypatch, backends.store, "remember_response", "error")
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        refused(client, cat_jpeg)
        job_id = the_job(service)
        deadline = time.monotonic() + SETTLE
        while (replay := client.post("/predict", content=cat_jpeg, headers=KEY)).status_code == 409:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["job_id"] == job_id
    assert service.store.get(job_id).status is JobStatus.RUNNING  # type: ignore[union-attr]


def test_without_faults_the_job_is_queued_with_its_message_and_its_answer_kept(
    service: TwopassService, backends: Backends, cat_jpeg: bytes
) -> None:
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        first = client.post("/predict", content=cat_jpeg, headers=KEY)
        replay = client.post("/predict", content=cat_jpeg, headers=KEY)
    assert first.status_code == 200 and replay.json() == first.json()
    assert settled(service, backends, first.json()["job_id"]) is JobStatus.QUEUED
    assert backends.messages() == 1


def test_a_key_the_clean_up_could_not_release_is_freed_once_its_job_has_long_ended(
    service: TwopassService, backends: Backends, cat_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table went away between the job's fail and the key's release, for longer than the clean-up
    tried: the key is held by a failed job. The next request with it frees it, once the clean-up can
    no longer be under way (so it can never release the newer request's claim)."""
    from twopass.api.services import idempotency
    from twopass.api.usecases import submit

    assert idempotency.RELEASE_AFTER_SECONDS > 2 * submit.COMPENSATE_FOR
    monkeypatch.setattr(submit, "COMPENSATE_FOR", 0.3)
    inject(monkeypatch, backends.publisher, "publish", "error")
    table_down = True
    real_forget = backends.store.forget_idempotency

    def forget(key_hash: str) -> None:
        if table_down:
            raise DependencyError("the table did not answer")
        real_forget(key_hash)

    monkeypatch.setattr(backends.store, "forget_idempotency", forget)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        refused(client, cat_jpeg)
        job_id = the_job(service)
        assert settled(service, backends, job_id) is JobStatus.FAILED
        deadline = time.monotonic() + SETTLE
        while submit.commits_in_flight():  # the clean-up gives up on the key
            assert time.monotonic() < deadline
            time.sleep(0.05)
        table_down = False
        held = client.post("/predict", content=cat_jpeg, headers=KEY)
        assert held.status_code == 409, "freed too early: the clean-up could still be releasing it"
        service.idempotency.release_after = 0.0  # as if RELEASE_AFTER_SECONDS had passed
        again = key_is_free_again(client, cat_jpeg, backends)
        assert again != job_id
        assert settled(service, backends, again) is JobStatus.QUEUED

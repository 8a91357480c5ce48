"""Job control in the worker: deadlines, cancelled jobs, results discarded after a cancel, and the images
of jobs that did not succeed kept for a retry.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from twopass.config import Settings
from twopass.jobs.base import JobRecord, JobStatus, JobStore, new_job_id
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.observability.metrics import Metric
from twopass.payloads import PayloadStore
from twopass.queue.base import JobMessage
from twopass.queue.memory import MemoryQueue
from twopass.worker.events import ObservedEvents, WorkerEvents
from twopass.worker.runner import Worker

SETTINGS = Settings().replace(max_batch_size=4, max_wait_ms=10, receivers=1, poll_wait_seconds=0.2)


class RecordingEvents(WorkerEvents):
    """Remembers every final event (what metrics and callbacks hang off)."""

    def __init__(self) -> None:
        self.finals: list[tuple[str, JobStatus, str | None]] = []

    def final(self, message: JobMessage, status: JobStatus, result: dict[str, Any] | None, error: str | None) -> None:
        super().final(message, status, result, error)
        self.finals.append((message.job_id, status, error))


class KeptPayloads(PayloadStore):
    """A payload bucket in memory: what the worker kept, by key."""

    def __init__(self, bucket: str = "payloads-bucket") -> None:
        super().__init__(client=object(), bucket=bucket)
        self.kept: dict[str, bytes] = {}
        self.deleted: list[str] = []

    def put(self, bucket: str, job_id: str, data: bytes) -> str:
        self.kept[job_id] = data
        return f"s3://{bucket}/payloads/{job_id}"

    def fetch(self, ref: str) -> bytes:
        return self.kept[ref.rsplit("/", 1)[-1]]

    def delete(self, ref: str) -> None:
        self.deleted.append(ref)


class Rig:
    def __init__(self, classifier: Classifier, store: JobStore | None = None, payloads: KeptPayloads | None = None):
        self.queue = MemoryQueue(visibility=30)
        self.store = store if store is not None else MemoryJobStore()
        self.events = RecordingEvents()
        self.payloads = payloads if payloads is not None else KeptPayloads()
        self.worker = Worker(
            classifier, self.queue, self.store, SETTINGS, worker_id="ctl", events=self.events, payloads=self.payloads
        )
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def submit(self, image: bytes, *, deadline_at: float | None = None, message_deadline: bool = True) -> str:
        job_id = new_job_id()
        self.store.create(JobRecord(job_id=job_id, deadline_at=deadline_at))
        carried = deadline_at if message_deadline else None
        self.queue.publish(JobMessage(job_id=job_id, image=image, deadline_at=carried))
        return job_id

    def wait(self, condition: Callable[[], object], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.02)

    def settled(self) -> bool:
        """Every message acked."""
        return len(self.queue) == 0


@pytest.fixture
def rig(slow_classifier: Classifier) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**kwargs: Any) -> Rig:
        r = Rig(kwargs.pop("classifier", slow_classifier), **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.worker.stop()
        r.thread.join(timeout=30)


# -- deadlines -----------------------------------------------------------------------------------


def test_a_job_past_its_deadline_is_expired_unrun_and_its_message_deleted(
    rig: Callable[..., Rig], cat_jpeg: bytes
) -> None:
    r = rig()
    late = r.submit(cat_jpeg, deadline_at=time.time() - 1)
    r.thread.start()
    r.wait(lambda: (rec := r.store.get(late)) is not None and rec.final)
    r.wait(r.settled)
    record = r.store.get(late)
    assert record is not None and record.status is JobStatus.EXPIRED
    assert record.error is not None and "deadline" in record.error
    assert record.attempts == 0 and record.started_at is None and record.result is None
    assert r.worker.stats.expired == 1 and r.worker.stats.batches == 0  # never reached the model
    assert r.worker.stats.failed == 0 and r.worker.stats.duplicates == 0
    assert r.events.finals == [(late, JobStatus.EXPIRED, record.error)]
    assert late in r.payloads.kept  # kept, so POST /job/{id}/retry can run it now
    assert record.image_ref == f"s3://payloads-bucket/payloads/{late}"


def test_jobs_in_time_run_beside_an_expired_one(rig: Callable[..., Rig], cat_jpeg: bytes) -> None:
    r = rig()
    late = r.submit(cat_jpeg, deadline_at=time.time() - 1)
    fine = r.submit(cat_jpeg, deadline_at=time.time() + 600)
    r.thread.start()
    r.wait(lambda: all((rec := r.store.get(j)) is not None and rec.final for j in (late, fine)))
    statuses = {j: r.store.get(j).status for j in (late, fine)}  # type: ignore[union-attr]
    assert statuses == {late: JobStatus.EXPIRED, fine: JobStatus.SUCCEEDED}
    assert fine not in r.payloads.kept


def test_a_deadline_passing_after_the_batch_was_taken_is_caught_by_the_store(
    rig: Callable[..., Rig], cat_jpeg: bytes
) -> None:
    # The message carries no deadline (as if it passed between the batcher's check and the write):
    # the store refuses to record a start past the job's deadline, and the worker expires the job.
    r = rig()
    job = r.submit(cat_jpeg, deadline_at=time.time() - 1, message_deadline=False)
    r.thread.start()
    r.wait(lambda: (rec := r.store.get(job)) is not None and rec.final)
    record = r.store.get(job)
    assert record is not None and record.status is JobStatus.EXPIRED and record.result is None
    assert r.worker.stats.expired == 1 and r.worker.stats.duplicates == 0


def test_a_late_redelivery_of_a_job_started_in_time_finishes_it(rig: Callable[..., Rig], cat_jpeg: bytes) -> None:
    r = rig()
    job = r.submit(cat_jpeg, deadline_at=time.time() + 0.2)
    assert r.store.start(job, "a-worker-that-died") is not None  # started before its deadline
    time.sleep(0.3)
    r.thread.start()
    r.wait(lambda: (rec := r.store.get(job)) is not None and rec.final)
    record = r.store.get(job)
    assert record is not None and record.status is JobStatus.SUCCEEDED and record.attempts == 2


# -- cancelled jobs ------------------------------------------------------------------------------


def test_a_job_cancelled_while_queued_never_runs_and_is_no_failure(rig: Callable[..., Rig], cat_jpeg: bytes) -> None:
    r = rig()
    cancelled = r.submit(cat_jpeg)
    assert r.store.cancel(cancelled)
    done = r.submit(cat_jpeg)
    r.thread.start()
    r.wait(lambda: (rec := r.store.get(done)) is not None and rec.final)
    r.wait(r.settled)  # the cancelled job's message is deleted too
    record = r.store.get(cancelled)
    assert record is not None and record.status is JobStatus.CANCELLED
    assert record.result is None and record.attempts == 0 and record.started_at is None
    stats = r.worker.stats
    assert stats.cancelled + stats.discarded == 1
    assert stats.failed == 0 and stats.duplicates == 0 and stats.succeeded == 1
    assert [status for _, status, _ in r.events.finals] == [JobStatus.SUCCEEDED]  # no event for the cancelled one
    assert record.image_ref is not None and cancelled in r.payloads.kept


class GatedClassifier:
    """The slow model, held inside ``predict_batch`` until the test lets it go."""

    def __init__(self, classifier: Classifier) -> None:
        self.inner = classifier
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, tensors: Sequence[np.ndarray]) -> Any:
        self.entered.set()
        assert self.release.wait(30)
        return self.inner.predict_batch(tensors)


def test_a_job_cancelled_while_running_has_its_result_discarded(
    rig: Callable[..., Rig], slow_classifier: Classifier, cat_jpeg: bytes
) -> None:
    gated = copy.copy(slow_classifier)
    gate = GatedClassifier(slow_classifier)
    gated.predict_batch = gate  # type: ignore[method-assign]
    r = rig(classifier=gated)
    job = r.submit(cat_jpeg)
    r.thread.start()
    assert gate.entered.wait(30)  # on the model now
    assert r.store.cancel(job)
    gate.release.set()
    r.wait(r.settled)  # acked: the job is final
    r.wait(lambda: r.worker.stats.discarded == 1)
    record = r.store.get(job)
    assert record is not None and record.status is JobStatus.CANCELLED and record.result is None
    stats = r.worker.stats
    assert stats.succeeded == 0 and stats.failed == 0 and stats.duplicates == 0
    assert r.events.finals == []  # no success event, so no metric and no completion callback
    assert record.image_ref is not None and job in r.payloads.kept


# -- images kept for a retry ---------------------------------------------------------------------


def test_a_failed_job_keeps_its_inline_image_and_a_succeeded_one_does_not(
    rig: Callable[..., Rig], cat_jpeg: bytes
) -> None:
    r = rig()
    bad = r.submit(b"not an image at all")
    good = r.submit(cat_jpeg)
    r.thread.start()
    r.wait(lambda: all((rec := r.store.get(j)) is not None and rec.final for j in (bad, good)))
    failed, succeeded = r.store.get(bad), r.store.get(good)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.image_ref == f"s3://payloads-bucket/payloads/{bad}"
    assert r.payloads.kept[bad] == b"not an image at all"
    assert succeeded is not None and succeeded.status is JobStatus.SUCCEEDED and succeeded.image_ref is None


def test_a_claim_checked_image_is_kept_where_it_is(rig: Callable[..., Rig]) -> None:
    payloads = KeptPayloads()
    r = rig(payloads=payloads)
    job = new_job_id()
    payloads.kept[job] = b"not an image"
    ref = f"s3://payloads-bucket/payloads/{job}"
    r.store.create(JobRecord(job_id=job, image_ref=ref))
    r.queue.publish(JobMessage(job_id=job, image_ref=ref))
    r.thread.start()
    r.wait(lambda: (rec := r.store.get(job)) is not None and rec.final)
    record = r.store.get(job)
    assert record is not None and record.status is JobStatus.FAILED and record.image_ref == ref
    assert payloads.deleted == []  # deleted only after a success


def test_without_a_bucket_nothing_is_kept(rig: Callable[..., Rig]) -> None:
    r = rig(payloads=KeptPayloads(bucket=""))
    bad = r.submit(b"not an image")
    r.thread.start()
    r.wait(lambda: (rec := r.store.get(bad)) is not None and rec.final)
    record = r.store.get(bad)
    assert record is not None and record.image_ref is None and r.payloads.kept == {}


@pytest.fixture(params=["memory", "dynamodb"])
def any_store(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    if request.param == "memory":
        yield MemoryJobStore()
        return
    from tests.conftest import template_in_moto
    from twopass.jobs.dynamodb import DynamoJobStore

    with template_in_moto() as settings:
        yield DynamoJobStore(settings.table_name)


def test_keep_image_records_a_ref_once_and_never_on_a_success(any_store: JobStore) -> None:
    failed, succeeded, claimed = new_job_id(), new_job_id(), new_job_id()
    for job_id in (failed, succeeded):
        any_store.create(JobRecord(job_id=job_id))
    any_store.create(JobRecord(job_id=claimed, image_ref="s3://b/payloads/x"))
    assert any_store.fail(failed, "boom")
    assert any_store.keep_image(failed, "s3://b/payloads/1")
    assert not any_store.keep_image(failed, "s3://b/payloads/2")  # first one stays
    assert any_store.succeed(succeeded, {"label": "tabby"})
    assert not any_store.keep_image(succeeded, "s3://b/payloads/3")
    assert not any_store.keep_image(claimed, "s3://b/payloads/4")
    assert not any_store.keep_image(new_job_id(), "s3://b/payloads/5")  # unknown job
    kept = [any_store.get(j) for j in (failed, succeeded, claimed)]
    assert [k.image_ref if k else None for k in kept] == ["s3://b/payloads/1", None, "s3://b/payloads/x"]
    # A retry keeps the image: it is what the retried job runs on.
    assert any_store.retry(failed)
    again = any_store.get(failed)
    assert again is not None and again.status is JobStatus.QUEUED and again.image_ref == "s3://b/payloads/1"


# -- metrics -------------------------------------------------------------------------------------


class FakeMetrics:
    def __init__(self) -> None:
        self.added: list[tuple[Metric, float]] = []

    def add(self, metric: Metric, value: float) -> None:
        self.added.append((metric, value))

    def flush(self) -> None:
        pass


def test_expired_jobs_count_in_jobs_expired_not_jobs_failed() -> None:
    metrics = FakeMetrics()
    events = ObservedEvents(metrics)  # type: ignore[arg-type]
    message = JobMessage(job_id=new_job_id(), image=b"x")
    events.final(message, JobStatus.EXPIRED, None, "not started before its deadline")
    events.final(message, JobStatus.FAILED, None, "boom")
    assert [m for m, _ in metrics.added] == [Metric.JOBS_EXPIRED, Metric.JOBS_FAILED]

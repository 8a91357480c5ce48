"""A model-based test of the job lifecycle: Hypothesis plays clients, workers, crashes and operators in
random orders, and checks after every step what must always hold.

The real pieces run: the API in process (``POST /predict`` with and without an Idempotency-Key, the
result cache, ``DELETE /job/{id}``, ``POST /job/{id}/retry``), the worker's own pipeline, recorder and
job control (a :class:`~twopass.worker.runner.Worker` per batch, its batch held on the model thread until
the test lets it finish or crash), SQS's redeliveries and dead-letter queue and the job table (in moto,
created from the template), the dead-letter sweep, the reconciler and deadlines. Only the two models
are replaced, through :meth:`~twopass.models.runtime.Classifier.logits`, by a function of the image
bytes, so every slow result can be checked against the bytes of its own job.

Rules: submit (an Idempotency-Key or none, a deadline or none; the queue refusing the message, timing
out after taking it, or the job left queued without one), duplicate delivery, a worker finishing its
batch, dying on the model or dying before its acks went out (the messages come back), a poison batch
dead-lettered, cancel, retry, the client reading its job, the dead-letter sweep, the reconciler, time
passing (deadlines), cache hits. Invariants: no job is lost; one final state per run (only the
owner's retry reopens a job); a slow result is the one of the job's own bytes, stored, served or
cached; nothing cancelled, failed or expired carries or serves a result, and no cached one comes from
a job that did not succeed; the sweep fails only jobs whose current run was dead-lettered; the
reconciler acts only on never-started jobs while the queue is empty; no idempotency key is left in
progress once its request has ended; history, attempts and timestamps only move forward; and once
the queues are drained every job has ended.

``TWOPASS_LIFECYCLE_EXAMPLES`` sets the examples per store for a longer hunt (random then, where the
default budget replays the same derandomized examples every run).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import boto3
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from PIL import Image

from tests.conftest import template_in_moto
from twopass.api.app import create_app
from twopass.api.auth import key_owner
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.exceptions import EnqueueError
from twopass.jobs.base import (
    FINAL_STATUSES,
    OPEN_STATUSES,
    RETRYABLE_STATUSES,
    IdempotencyRecord,
    JobRecord,
    JobStatus,
    JobStore,
)
from twopass.jobs.cache import cache_for
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.jobs.memory import MemoryJobStore
from twopass.models.card import ModelCard, card_path
from twopass.models.labels import imagenet_labels
from twopass.models.runtime import Classifier
from twopass.payloads import PayloadStore
from twopass.queue.base import Delivery, JobMessage
from twopass.queue.sqs import SqsPublisher, SqsSource
from twopass.worker.chores.deadletter import dead_letter_queue_url, sweep
from twopass.worker.chores.reconcile import LOST_REASON, Reconciler
from twopass.worker.intake import Item
from twopass.worker.recorder import RUNNING_MARK_SECONDS
from twopass.worker.runner import Worker

#: Examples per store: a few dozen sequences in ``make test``, more on demand.
EXAMPLES = int(os.environ.get("TWOPASS_LIFECYCLE_EXAMPLES", "0"))
STEPS = 30
MEMORY_EXAMPLES = 25
DYNAMODB_EXAMPLES = 12
#: Jobs and queue messages one sequence makes at most: every dead-lettered message then fits in one
#: receive of the dead-letter queue (ten), which is how the test sees what the sweep will see.
MAX_JOBS = 5
MAX_MESSAGES = 9
#: Seconds one "time passes" step moves the clock: a deadline of 60 s passes at the first, one of 180 s
#: at the second (and never in the real time a sequence takes).
TICK = 120.0
#: Images above it travel as claim checks (kept in the bucket, so a dead-lettered job can be retried);
#: the others inline (kept by the worker only when it ends them itself).
INLINE_LIMIT = 1024
KEYS = ["k1", "k2"]
DEADLINES = st.sampled_from([None, 60, 180])


# -- the images and the models ------------------------------------------------------------------------


def _png(seed: int, noisy: bool) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) if noisy else np.full((8, 8, 3), seed * 40, np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


#: Two claim-checked images and two inline ones.
IMAGES = [_png(seed, noisy=seed % 2 == 0) for seed in range(4)]
assert sorted(len(i) > INLINE_LIMIT for i in IMAGES) == [False, False, True, True]


def class_ids(digest: bytes) -> list[int]:
    """Five distinct ImageNet classes named by a digest: the "model" is this function of the bytes."""
    ids: list[int] = []
    while len(ids) < 5:
        for i in range(0, len(digest) - 1, 2):
            cid = int.from_bytes(digest[i : i + 2], "big") % 1000
            if cid not in ids and len(ids) < 5:
                ids.append(cid)
        digest = hashlib.sha256(digest).digest()
    return ids


def slow_answer(image: bytes) -> list[int]:
    """The class ids, best first, that the slow model gives ``image``."""
    return class_ids(hashlib.sha256(image).digest())


class WorkerCrashed(BaseException):
    """The worker's process died on the model thread: nothing after that point runs."""


class Gate:
    """Holds a batch on the model until the test lets it finish or crash the worker."""

    def __init__(self) -> None:
        self._go = threading.Event()
        self._crash = False

    def hold(self) -> None:
        assert self._go.wait(30), "the test never let the batch go"
        if self._crash:
            raise WorkerCrashed()

    def open(self) -> None:
        self._go.set()

    def crash(self) -> None:
        self._crash = True
        self._go.set()


class HashModel(Classifier):
    """A classifier whose logits are a function of the image bytes (sha256), not an ONNX session.

    Everything around ``logits`` is the real class: softmax, top-k, labels, the result's shape.
    """

    def __init__(self, card: ModelCard, salt: bytes = b"", gate: Gate | None = None) -> None:
        # No Classifier.__init__: there is no session to load; logits() stands in for session.run.
        self.path = Path(f"hash-{card.name}.onnx")
        self.card = card
        self.providers = ("CPUExecutionProvider",)
        self.labels = imagenet_labels()
        self.top_k = 5
        self.load_seconds = 0.0
        self.salt = salt
        self.gate = gate

    def tensor(self, data: bytes, *, max_pixels: int) -> np.ndarray:
        return np.frombuffer(hashlib.sha256(self.salt + data).digest(), dtype=np.uint8).astype(np.float32)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.hold()
        out = np.tile(-np.arange(1000, dtype=np.float32) / 1000, (len(batch), 1))
        for row, digest in zip(out, batch, strict=True):
            for rank, cid in enumerate(class_ids(bytes(digest.astype(np.uint8)))):
                row[cid] = 10.0 - 2 * rank
        return out


# -- seams that only record (and, when told, fail) ---------------------------------------------------


class TrackedPublisher(SqsPublisher):
    """SQS, telling the test every message it sends; ``outage`` makes the next publish fail."""

    def __init__(self, queue_url: str, on_publish: Callable[[str, JobMessage], None]) -> None:
        super().__init__(queue_url)
        self.on_publish = on_publish
        #: ``refused``: nothing sent; ``unknown``: sent, but the caller hears a timeout; ``lost``: the
        #: caller hears it was sent, but no message exists (what a record left behind by an outage
        #: that also kept the API from ending the job amounts to: a job queued with no message).
        self.outage: str | None = None
        self.tried: list[str] = []

    def publish(self, message: JobMessage) -> str:
        self.tried.append(message.job_id)
        outage, self.outage = self.outage, None
        if outage == "refused":
            raise EnqueueError("the queue is unavailable")
        if outage == "lost":
            return f"lost-{uuid.uuid4()}"
        message_id = super().publish(message)
        self.on_publish(message_id, message)
        if outage == "unknown":
            raise EnqueueError("the send timed out (it had in fact been sent)")
        return message_id


class TrackedSource(SqsSource):
    """The worker's SQS source, remembering which deliveries were deleted."""

    def __init__(self, queue_url: str, visibility_timeout: int) -> None:
        super().__init__(queue_url, visibility_timeout=visibility_timeout)
        self.acked: set[str] = set()

    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        failed = super().ack(deliveries)
        self.acked.update(d.receipt for d in deliveries if d not in failed)
        return failed


class SequenceTable(DynamoJobStore):
    """The template's table, which every sequence shares: the reconciler's scan for never-started jobs
    sees this sequence's own (as in a table of its own), never those an earlier sequence left."""

    def __init__(self, table_name: str, owner: str) -> None:
        super().__init__(table_name)
        self.owner = owner

    def never_started(self, created_before: float, limit: int = 100) -> list[JobRecord]:
        return [r for r in super().never_started(created_before, limit) if r.owner == self.owner]


# -- one worker, one batch ----------------------------------------------------------------------------


def _decoded(worker: Worker, message: JobMessage) -> Future[np.ndarray]:
    """The image decoded as the worker's intake decodes it (here on the test's thread)."""
    future: Future[np.ndarray] = Future()
    try:
        future.set_result(worker._decode(message))
    except Exception as exc:  # the pipeline decides what a decode error means
        future.set_exception(exc)
    return future


class WorkerRun:
    """A worker that received one batch and handed it to its pipeline; the model holds it at the gate.

    ``finish`` lets the model run and the results be written (and acked, or lost with the worker);
    ``crash`` kills it on the model. Either way what it had not acked comes back to the queue, as its
    visibility timeout would make it.
    """

    def __init__(self, rig: Lifecycle, size: int, mark_running: bool) -> None:
        self.source = rig.source
        self.gate = Gate()
        model = HashModel(rig.slow_card, gate=self.gate)
        self.worker = Worker(
            model, rig.source, rig.store, rig.settings, worker_id=f"w{uuid.uuid4().hex[:6]}",
            payloads=PayloadStore(bucket=rig.settings.payload_bucket), cache=rig.cache,
        )  # fmt: skip
        if mark_running:  # as if its batches were slow: jobs are marked running before the model runs
            self.worker.stats.add_batch(1, RUNNING_MARK_SECONDS + 1)
        self.deliveries = rig.source.receive(size, 0)
        if self.deliveries:
            self.worker.leases.hold(self.deliveries)
            items = [Item(d, _decoded(self.worker, d.message)) for d in self.deliveries]
            self.worker.pipeline.process(items)

    def finish(self, *, ack: bool) -> None:
        self.gate.open()
        self._close()
        if ack:
            self.worker.leases.flush()
        self._come_back()

    def crash(self) -> None:
        self.gate.crash()
        self._close()
        self._come_back()

    def _close(self) -> None:
        self.worker.pipeline.close()  # the model thread, then the finisher: every write is done
        self.worker.recorder.close()

    def _come_back(self) -> None:
        unacked = [d for d in self.deliveries if d.receipt not in self.source.acked]
        if unacked:
            self.source.release(unacked)


# -- the model --------------------------------------------------------------------------------------


@dataclass
class Job:
    """What the test knows of one job."""

    image: bytes
    #: The client was given the job id (a 200); an abandoned submission's job is not accepted.
    accepted: bool
    #: Runs the owner asked for again (``history`` holds one entry per retry).
    retries: int = 0
    #: The first final state seen in each run: a run has exactly one.
    finals: dict[int, JobStatus] = field(default_factory=dict)
    attempts: int = 0
    updated_at: float = 0.0


@dataclass
class Key:
    """An Idempotency-Key as the test used it."""

    image: bytes
    job_id: str | None  # None: the key was released (its request failed) and may be used afresh


class Clock:
    """``time.time`` moved forward by the "time passes" rule (deadlines; everything else only sees a later time)."""

    offset = 0.0
    real = staticmethod(time.time)

    @classmethod
    def time(cls) -> float:
        return cls.real() + cls.offset


class Lifecycle(RuleBasedStateMachine):
    backend: ClassVar[str]
    aws: ClassVar[Settings]
    dlq_url: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        Clock.offset = 0.0  # each sequence starts now (the records it makes live for days, not weeks)
        self.sqs = boto3.client("sqs", region_name="us-east-1")
        for url in (self.aws.queue_url, self.dlq_url):  # what an earlier sequence left behind
            _empty(self.sqs, url)
        api_key = f"key-{uuid.uuid4().hex[:12]}"  # a tenant per sequence: its own cache and keys
        self.headers = {"x-api-key": api_key}
        self.owner = key_owner(api_key)
        self.settings = self.aws.replace(
            api_keys=api_key, result_cache=True, inline_image_bytes=INLINE_LIMIT, cascade_threshold=0.0
        )
        memory = self.backend == "memory"
        store = MemoryJobStore() if memory else SequenceTable(self.settings.table_name, self.owner)
        self.store: JobStore = store
        self.cache = cache_for(store, 86400)
        self.fast_card = ModelCard.load(card_path(Path(self.settings.fast_model)))
        self.slow_card = ModelCard.load(card_path(Path(self.settings.slow_model)))
        self.publisher = TrackedPublisher(self.settings.queue_url, self._published)
        self.source = TrackedSource(self.settings.queue_url, self.settings.visibility_timeout_seconds)
        service = TwopassService(self.settings, store, self.publisher, classifier=HashModel(self.fast_card, b"fast"))
        service.shortcuts.cache = self.cache  # the worker's twin (in memory they must be one object)
        self.client = TestClient(create_app(service, emit_metrics=False), raise_server_exceptions=False)
        self.client.__enter__()
        self.reconciler = Reconciler(
            store, self.publisher, after_seconds=0, retention_seconds=self.settings.queue_retention_seconds,
            clock=lambda: time.time(),
        )  # fmt: skip
        self.jobs: dict[str, Job] = {}
        self.keys: dict[str, Key] = {}
        #: Every message sent for a job: message id → (job id, the run it was sent for).
        self.messages: dict[str, tuple[str, int, str]] = {}
        self.workers: list[WorkerRun] = []
        self._image = b""

    # -- bookkeeping ---------------------------------------------------------------------------------

    def _published(self, message_id: str, message: JobMessage) -> None:
        record = self.store.get(message.job_id)
        run = len(record.history) if record is not None else 0
        self.messages[message_id] = (message.job_id, run, message.encode())

    def _adopt(self, job_ids: Sequence[str], accepted: bool) -> None:
        for job_id in job_ids:
            if job_id not in self.jobs:
                self.jobs[job_id] = Job(self._image, accepted)

    def _record(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        assert record is not None, f"job {job_id} is lost"
        return record

    def _key_hash(self, key: str) -> str:
        return hashlib.sha256(f"{self.owner}\0{key}".encode()).hexdigest()

    def _dead_letters(self) -> tuple[int, set[tuple[str, int]]]:
        """How many messages the dead-letter queue holds now, and the (job, run) each was sent for."""
        out = self.sqs.receive_message(
            QueueUrl=self.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        )
        found = out.get("Messages", [])
        assert len(found) < 10, "more dead letters than one receive shows: lower MAX_MESSAGES"
        runs = {(job, run) for job, run, _ in (self.messages[m["MessageId"]] for m in found)}
        return len(found), runs

    def _queue_depth(self) -> int:
        return sum(self.publisher.ping().values())

    # -- clients -------------------------------------------------------------------------------------

    def _post(self, image: bytes, key: str | None, deadline: int | None) -> tuple[Any, list[str]]:
        body: dict[str, Any] = {"image_data": base64.b64encode(image).decode()}
        if deadline is not None:
            body["deadline_seconds"] = deadline
        headers = {**self.headers, **({"Idempotency-Key": key} if key else {})}
        self._image = image
        tried = len(self.publisher.tried)
        response = self.client.post("/predict", json=body, headers=headers)
        return response, self.publisher.tried[tried:]

    @precondition(lambda self: len(self.jobs) < MAX_JOBS and len(self.messages) < MAX_MESSAGES)
    @rule(image=st.integers(0, len(IMAGES) - 1), key=st.none() | st.sampled_from(KEYS), deadline=DEADLINES)
    def submit(self, image: int, key: str | None, deadline: int | None) -> None:
        self._submit(IMAGES[image], key, deadline, None)

    @precondition(lambda self: len(self.jobs) < MAX_JOBS and len(self.messages) < MAX_MESSAGES)
    @rule(
        image=st.integers(0, len(IMAGES) - 1),
        key=st.none() | st.sampled_from(KEYS),
        outage=st.sampled_from(["refused", "unknown", "lost"]),
    )
    def submit_in_outage(self, image: int, key: str | None, outage: str) -> None:
        """The queue refuses the publish, or times out after sending it, or the job is left without a message."""
        self._submit(IMAGES[image], key, None, outage)

    def _submit(self, image: bytes, key: str | None, deadline: int | None, outage: str | None) -> None:
        known = self.keys.get(key) if key else None
        self.publisher.outage = outage
        try:
            response, tried = self._post(image, key, deadline)
        finally:
            self.publisher.outage = None
        if known is not None and known.job_id is not None:
            if known.image != image:
                assert response.status_code == 422, response.text
                assert response.json()["error"] == "idempotency_key_reused"
            else:
                assert response.status_code == 200, response.text
                assert response.json()["job_id"] == known.job_id, "a replay answers with the first job"
                assert response.headers.get("Idempotent-Replayed") == "true"
            assert not tried
            return
        if outage in ("refused", "unknown") and tried:
            assert response.status_code == 503, response.text
            self._adopt(tried, accepted=False)
            if key:
                self.keys[key] = Key(image, None)  # released: the client may use it again
            return
        assert response.status_code == 200, response.text
        answer = response.json()
        job_id = answer["job_id"]
        self._adopt([job_id], accepted=True)
        if answer["status"] == "succeeded":  # a cache hit: the slow result of these very bytes
            assert answer["cached"] is True and not tried
            assert [t["class_id"] for t in answer["slow"]["top_k"]] == slow_answer(image)
            result = self._record(job_id).result
            assert result is not None
            source = self._record(result["cached_from"])  # a job that succeeded (never a cancelled one)
            assert source.status is JobStatus.SUCCEEDED and source.result is not None
        else:
            assert answer["status"] == "queued" and tried == [job_id]
        if key:
            self.keys[key] = Key(image, job_id)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.cancel_job(data.draw(st.sampled_from(list(self.jobs)), label="job"))

    def cancel_job(self, job_id: str) -> None:
        before = self._record(job_id)
        response = self.client.delete(f"/job/{job_id}", headers=self.headers)
        if before.status in OPEN_STATUSES:
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "cancelled"
        else:
            assert response.status_code == 409 and response.json()["error"] == "job_final", response.text

    @precondition(lambda self: self.jobs and len(self.messages) < MAX_MESSAGES)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        self.retry_job(data.draw(st.sampled_from(list(self.jobs)), label="job"))

    def retry_job(self, job_id: str) -> None:
        before = self._record(job_id)
        response = self.client.post(f"/job/{job_id}/retry", headers=self.headers)
        if before.status not in RETRYABLE_STATUSES:
            assert response.status_code == 409 and response.json()["error"] == "job_not_retryable", response.text
        elif before.image_ref is None:  # gone, or (a cancelled job's) still to be kept by a worker
            refusals = {(410, "image_gone"), (409, "image_pending")}
            assert (response.status_code, response.json()["error"]) in refusals, response.text
        else:
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "queued"
            self.jobs[job_id].retries += 1

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def client_reads(self, data: st.DataObject) -> None:
        """``GET /job/{id}``: what is served is the job's own slow result, and only once it succeeded."""
        job_id = data.draw(st.sampled_from(list(self.jobs)), label="job")
        response = self.client.get(f"/job/{job_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == self._record(job_id).status.value
        if body["status"] == JobStatus.SUCCEEDED.value:
            assert [t["class_id"] for t in body["slow"]["top_k"]] == slow_answer(self.jobs[job_id].image)
        else:
            assert body.get("slow") is None and body[job_id] == {"prediction": None}, "served a result it has not"

    # -- workers -------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.workers) < 2)
    @rule(size=st.integers(1, 4), mark_running=st.booleans())
    def worker_takes_a_batch(self, size: int, mark_running: bool) -> None:
        run = WorkerRun(self, size, mark_running)
        if run.deliveries:
            self.workers.append(run)
        else:
            run.finish(ack=True)

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), ack=st.booleans())
    def worker_finishes(self, data: st.DataObject, ack: bool) -> None:
        """The batch runs and is recorded; without ``ack`` the worker dies before its deletes went out."""
        run = self.workers.pop(data.draw(st.integers(0, len(self.workers) - 1), label="worker"))
        run.finish(ack=ack)

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def worker_crashes(self, data: st.DataObject) -> None:
        """The worker dies while its batch is on the model: nothing of it is recorded."""
        self.workers.pop(data.draw(st.integers(0, len(self.workers) - 1), label="worker")).crash()

    @precondition(lambda self: not self.workers)
    @rule()
    def poison_batch(self) -> None:
        """Every worker that takes what is queued now dies on it, until SQS dead-letters it all."""
        assert self.source.max_receive_count is not None
        for _ in range(self.source.max_receive_count + 1):
            run = WorkerRun(self, 10, mark_running=False)
            if not run.deliveries:
                break
            run.crash()

    @precondition(lambda self: self.messages and len(self.messages) < MAX_MESSAGES)
    @rule(data=st.data())
    def duplicate_delivery(self, data: st.DataObject) -> None:
        """SQS delivers a message a second time (at-least-once): a copy of one already sent."""
        message_id = data.draw(st.sampled_from(list(self.messages)), label="message")
        job_id, run, body = self.messages[message_id]
        copy = self.sqs.send_message(QueueUrl=self.aws.queue_url, MessageBody=body)
        self.messages[copy["MessageId"]] = (job_id, run, body)

    # -- operations ----------------------------------------------------------------------------------

    @rule()
    def dead_letter_sweep(self) -> None:
        """The worker's periodic sweep, its previous pass's hiding of the dead letters long over."""
        count, dead = self._dead_letters()
        before = self.store.get_many(self.jobs)
        # Exactly what is there (a receive that finds nothing long-polls for a second); visibility 0: the
        # next sweep sees them all again, as the real one does once its hiding (5 minutes) is over.
        sweep(self.dlq_url, self.store, max_messages=count, visibility=0)
        after = self.store.get_many(self.jobs)
        for job_id, was in before.items():
            now = after[job_id]
            if now.status is not was.status:
                run = len(now.history)
                assert (job_id, run) in dead, (
                    f"the sweep failed job {job_id} in run {run} ({was.status.value} before), but only "
                    f"runs {sorted(r for j, r in dead if j == job_id)} of it were dead-lettered"
                )

    @rule()
    def reconcile(self) -> None:
        busy = self._queue_depth() > 0
        before = self.store.get_many(self.jobs)
        report = self.reconciler.run()
        after = self.store.get_many(self.jobs)
        if busy:
            assert report.republished == report.failed == 0, "a message may still be waiting: nothing is certain"
        for job_id, was in before.items():
            now = after[job_id]
            if now.status is not was.status:
                assert was.status is JobStatus.QUEUED and was.attempts == 0 and not was.image_ref
                assert now.status is JobStatus.FAILED and now.error == LOST_REASON

    @rule()
    def time_passes(self) -> None:
        Clock.offset += TICK

    # -- invariants ----------------------------------------------------------------------------------

    @invariant()
    def jobs_are_consistent(self) -> None:
        records = self.store.get_many(self.jobs)
        for job_id, job in self.jobs.items():
            record = records.get(job_id)
            assert record is not None, f"job {job_id} is lost"
            _check_record(job, record)

    @invariant()
    def no_key_is_stuck(self) -> None:
        for key, used in self.keys.items():
            stored: IdempotencyRecord | None = self.store.idempotency(self._key_hash(key))
            if used.job_id is None:
                assert stored is None, f"key {key!r} is left in progress after its request failed"
            else:
                assert stored is not None and stored.response is not None, f"key {key!r} has no answer to replay"
                assert stored.response["job_id"] == used.job_id

    # -- the end: drain, then everything has ended ---------------------------------------------------

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is not None:
                return  # a step failed: that is the error to report, not what draining after it finds
            self._drain()
            for job_id, job in self.jobs.items():
                record = self._record(job_id)
                which = "accepted" if job.accepted else "abandoned"
                assert record.final, f"{which} job {job_id} is still {record.status.value} with nothing left to run it"
                _check_record(job, record)
        finally:
            for run in self.workers:
                run.crash()
            self.client.__exit__(None, None, None)

    def _drain(self) -> None:
        while self.workers:
            self.workers.pop().finish(ack=True)
        for _ in range(4 * MAX_MESSAGES):
            run = WorkerRun(self, 10, mark_running=False)
            run.finish(ack=True)
            self.jobs_are_consistent()
            if run.deliveries:
                continue
            self.dead_letter_sweep()
            self.reconcile()
            self.reconcile()  # "empty at two passes in a row"
            if not self._queue_depth():
                break


def _check_record(job: Job, record: JobRecord) -> None:
    """What must hold of a job's record at any time."""
    run = len(record.history)
    assert run == job.retries, f"{run} earlier runs in history, but the owner retried {job.retries} times"
    if record.final:
        first = job.finals.setdefault(run, record.status)
        assert record.status is first, f"run {run} ended {first.value}, then became {record.status.value}"
        assert record.finished_at is not None
    else:
        assert record.finished_at is None
    if record.status is JobStatus.SUCCEEDED:
        assert record.result is not None and record.result.get("answered_by") == "slow"
        assert [t["class_id"] for t in record.result["top_k"]] == slow_answer(job.image), "another job's result"
    else:
        assert record.result is None, f"a {record.status.value} job carries a result"
    assert record.attempts >= job.attempts, "attempts went back"
    assert record.updated_at is not None and record.updated_at >= job.updated_at, "updated_at went back"
    job.attempts, job.updated_at = record.attempts, record.updated_at
    assert record.created_at <= record.updated_at
    if record.started_at is not None:
        assert record.created_at <= record.started_at
        if record.finished_at is not None:
            assert record.started_at <= record.finished_at
    last_retry, last_attempts = record.created_at, 0
    for entry in record.history:
        assert JobStatus(entry["status"]) in RETRYABLE_STATUSES
        assert entry["retried_at"] >= last_retry and entry["attempts"] >= last_attempts
        assert entry.get("finished_at", entry["retried_at"]) <= entry["retried_at"]
        last_retry, last_attempts = entry["retried_at"], entry["attempts"]
    assert record.attempts >= last_attempts
    assert record.status in FINAL_STATUSES | OPEN_STATUSES


def _empty(sqs: Any, url: str) -> None:
    """Delete every visible message (moto lets a queue be purged once a minute)."""
    while True:
        found = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not found:
            return
        for message in found:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


# -- the tests ----------------------------------------------------------------------------------------


@pytest.fixture
def lifecycle(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], type[Lifecycle]]]:
    """A state machine class bound to the template's resources in moto, with a clock the test moves."""
    with template_in_moto() as aws:
        monkeypatch.setattr(time, "time", Clock.time)
        dlq = dead_letter_queue_url(aws.queue_url)
        assert dlq is not None

        def bound(backend: str) -> type[Lifecycle]:
            return type(f"Lifecycle_{backend}", (Lifecycle,), {"backend": backend, "aws": aws, "dlq_url": dlq})

        yield bound


def _settings(default_examples: int) -> settings:
    return settings(
        max_examples=EXAMPLES or default_examples,
        stateful_step_count=STEPS,
        deadline=None,
        database=None,
        derandomize=not EXAMPLES,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )


def test_lifecycle_in_memory(lifecycle: Callable[[str], type[Lifecycle]]) -> None:
    run_state_machine_as_test(lifecycle("memory"), settings=_settings(MEMORY_EXAMPLES))


def test_lifecycle_in_dynamodb(lifecycle: Callable[[str], type[Lifecycle]]) -> None:
    run_state_machine_as_test(lifecycle("dynamodb"), settings=_settings(DYNAMODB_EXAMPLES))


@pytest.mark.parametrize("backend", ["memory", "dynamodb"])
def test_a_retried_dead_letter_is_not_failed_again_by_the_next_sweep(
    lifecycle: Callable[[str], type[Lifecycle]], backend: str
) -> None:
    """The sequence the machine shrank its first failure to, kept as a plain test.

    A claim-checked job whose message is dead-lettered is failed by the sweep and retried by its
    owner; its dead letter is still in the queue, and the next sweep must leave the new run alone
    (queued, and then running) so that its result is recorded.
    """
    machine = lifecycle(backend)()
    try:
        machine.submit(image=0, key=None, deadline=None)
        (job_id,) = machine.jobs
        machine.poison_batch()
        machine.dead_letter_sweep()
        assert machine._record(job_id).status is JobStatus.FAILED
        machine.retry_job(job_id)
        machine.dead_letter_sweep()  # queued: the dead letter is of run 0
        machine.worker_takes_a_batch(size=1, mark_running=True)
        machine.dead_letter_sweep()  # running
        machine.workers.pop().finish(ack=True)
        record = machine._record(job_id)
        assert record.status is JobStatus.SUCCEEDED and len(record.history) == 1
        machine.jobs_are_consistent()
    finally:
        machine.teardown()

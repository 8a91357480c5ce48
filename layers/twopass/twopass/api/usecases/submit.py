"""The fast path of ``POST /predict``: decode and classify, record and enqueue, answer.

The job record is written as soon as the image has decoded, overlapping the fast model instead of
following it; bad input fails before any job exists. The queue message is sent once the fast model
has answered, because it carries the fast top-1 (the worker compares it with the slow one: agreement)
and because the cascade may find the fast answer confident enough to stand, and then nothing is sent.
A result-cache lookup runs beside the decode; on a hit the record is written already succeeded.
Waiting on the backends is bounded by ``api_deadline_seconds``: past it the client gets 503 with
Retry-After, never a hang.

No half-submitted job: from the record's write on, record -> publish (or the cascade's answer) ->
the Idempotency-Key's answer run as one commit that the request's deadline does not cut in the
middle. It ends with the job queued with its message and the answer kept for the key, or with the
job failed and its key released, whichever step failed or overran (see :class:`_Commit`).

Few hops: a request leaves the event loop once for the model (decode and classify, one trip to the
inference pool) and once or twice for the backends (the cache lookup, the wait for a valid decode and
the record's write in one trip; the publish and the key's answer in another). The I/O side learns that
the image decoded from the inference thread directly (a :class:`threading.Event`), without a round
through the event loop. Backends that never block (the in-memory ones) are called on the inference
thread itself, after the fast answer: one trip off the event loop per request.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twopass.api.body import Submission
from twopass.api.context import ApiContext
from twopass.api.errors import HTTPProblemError
from twopass.api.schemas import PredictResponse
from twopass.cascade import Route, SlowMode
from twopass.exceptions import (
    DependencyTimeoutError,
    IdempotencyConflictError,
    RequestInProgressError,
    TwopassError,
)
from twopass.jobs.base import IdempotencyRecord, JobRecord, new_job_id
from twopass.jobs.cache import CachedResult
from twopass.models.runtime import Prediction
from twopass.observability.logs import job_extra
from twopass.observability.metrics import Metric
from twopass.queue.base import JobMessage

logger = logging.getLogger(__name__)

#: How long the commit keeps trying to end a half-made job while the store is unreachable (seconds),
#: and its backoff between tries. Past it the worker's reconciler ends the job, and the key is freed
#: by the next request that uses it (see ``Idempotency.replay``).
COMPENSATE_FOR = 30.0
COMPENSATE_FIRST_DELAY = 0.1
COMPENSATE_MAX_DELAY = 1.0


@dataclass(frozen=True)
class Caller:
    """Who submitted, and the request's own identifiers."""

    owner: str
    request_id: str
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Submitted:
    response: PredictResponse
    #: The answer was replayed for a repeated Idempotency-Key.
    replayed: bool = False
    #: The fast model's prediction, every class included; None when replayed (only the answer was kept).
    prediction: Prediction | None = None


async def submit(context: ApiContext, submission: Submission, caller: Caller) -> Submitted:
    """Classify ``submission`` with the fast model and queue its slow job, within the deadline."""
    deadline = context.settings.api_deadline_seconds
    answer_by = asyncio.get_running_loop().time() + deadline
    try:
        async with asyncio.timeout_at(answer_by):
            return await _submit(context, submission, caller, answer_by)
    except TimeoutError:
        raise DependencyTimeoutError(f"the job store or queue did not answer within {deadline:g} s") from None


async def _submit(context: ApiContext, submission: Submission, caller: Caller, answer_by: float) -> Submitted:
    service = context.service
    if submission.slow is SlowMode.NEVER:  # a pure function of the image: nothing to record or replay
        return await _fast_only(context, submission)
    options = submission.options
    deadline_at = options.deadline_at(context.settings)
    claim = submission.claim or service.idempotency.claim(caller.idempotency_key, caller.owner, submission.data)
    if claim is not None and (earlier := await context.io(service.idempotency.replay, claim)) is not None:
        return Submitted(PredictResponse.model_validate(earlier), replayed=True)
    if await overloaded(context):
        return await _shed(context, submission, caller)
    record = JobRecord(
        job_id=new_job_id(),
        owner=caller.owner,
        deadline_at=deadline_at,
        priority=service.intake.priority(options.priority),
    )
    commit = _Commit(context, submission, caller, record, claim)
    return await _committed(commit, answer_by)


async def _committed(commit: _Commit, answer_by: float) -> Submitted:
    """Run the commit beside the request: the request's deadline answers 503, it does not cut the commit.

    The commit keeps the same deadline and, once past it, ends the job it may have half-made (failed,
    key released) on its own time. Where the process is frozen once it has answered (Lambda), the 503
    waits for that a while (up to one more deadline), so a sandbox is seldom frozen mid-way.
    """
    task = asyncio.ensure_future(commit.run(answer_by))
    _keep(task)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.done() and not task.cancelled() and task.exception() is None:
            return task.result()  # committed in the instant the deadline passed: the answer stands
        if _frozen_after_answer():
            # Bounded, so the 503 still comes well inside the function's timeout; a sandbox frozen
            # with the commit still trying resumes it on its next request.
            await asyncio.wait({task}, timeout=commit.context.settings.api_deadline_seconds)
        raise


#: Commits and clean-ups still running (a reference keeps each task alive after its request answered).
_commits: set[asyncio.Future[Any]] = set()


def _keep(task: asyncio.Future[Any]) -> None:
    """Hold ``task`` until it ends (the event loop keeps only weak references to tasks)."""
    _commits.add(task)
    task.add_done_callback(_settled)


def _settled(task: asyncio.Future[Any]) -> None:
    """Forget a finished commit; its error was answered already, or logged when it came after the answer."""
    _commits.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a commit that outlived its request is not an unhandled error


def commits_in_flight() -> int:
    """Commits (and their clean-ups) of this process still running, some past their request's answer.

    Tests wait for 0 before they look at the store; a shutdown can wait for it too.
    """
    return len(_commits)


def _frozen_after_answer() -> bool:
    """Whether this process may be frozen once a request has answered (a Lambda sandbox)."""
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


class _Commit:
    """Record, then publish (or let the fast answer stand), then remember the answer for the key.

    All of it, or the job ended (failed, its idempotency key released) by :meth:`_compensate` —
    whatever failed: a backend's error, the fast model, or the deadline passing mid-step (a step cut
    off by the deadline may still land later; :meth:`JobIntake.abandon` leaves it nothing to land on).

    The backend steps run on the I/O pool, two trips in all: what comes before the fast answer
    (:meth:`_record`) and what follows it (:meth:`_publish`). A trip outlives a deadline that cut it
    short, so each step that writes first passes :meth:`_may_write`: once the commit has stopped, no
    new write starts, and a write that started is one the clean-up knows of (``writing``).
    """

    def __init__(
        self,
        context: ApiContext,
        submission: Submission,
        caller: Caller,
        record: JobRecord,
        claim: IdempotencyRecord | None,
    ) -> None:
        self.context, self.submission, self.caller = context, submission, caller
        self.record, self.claim = record, claim
        #: Set once the record's write has begun: from then on a failure must end the job.
        self.writing = False
        #: The answer, once known, for an Idempotency-Key's replays (``None`` without a key: nobody reads it).
        self.response: dict[str, Any] | None = None
        #: Backend time of the record's write and of the publish (milliseconds, measured on the I/O threads).
        self.enqueue_ms = 0.0
        self._gate = threading.Lock()
        self._stopped = False
        #: Backends that never block: the steps after the fast answer run on the inference thread.
        self.inline = context.inline_backends
        #: What the inline steps decided: the job's final result (if the fast answer stands) and the answer.
        self.final: dict[str, Any] | None = None
        self.answer: PredictResponse | None = None
        # Assigned before the work starts: the inline steps read it on the inference thread, which may
        # be done before a constructor that started the work would have returned.
        self.inference = _Inference(context, submission, then=self._inline_steps if self.inline else None)
        #: The fast prediction (or why the image was refused).
        self.predicted = self.inference.start()

    async def run(self, answer_by: float) -> Submitted:
        try:
            async with asyncio.timeout_at(answer_by):
                return await self._steps(answer_by)
        except BaseException as exc:
            self.predicted.cancel()
            with self._gate:  # no write starts after this; one that started is known
                self._stopped = True
                writing = self.writing
            if writing:
                await self._compensate(_reason(exc))
            raise

    def _may_write(self) -> bool:
        """On an I/O thread, just before a write: ``False`` once the commit has stopped (nothing may start)."""
        with self._gate:
            if self._stopped:
                return False
            self.writing = True
            return True

    async def _compensate(self, reason: str) -> None:
        """End the job and release its key now; while the store is unreachable, keep trying in the
        background (a bounded while) rather than hold the answer."""
        abandon = functools.partial(
            self.context.service.intake.abandon,
            self.record.job_id, self.claim, reason, record=self.record, response=self.response,
        )  # fmt: skip
        if not await self.context.io(abandon):
            _keep(asyncio.ensure_future(self._keep_compensating(abandon, reason)))

    async def _steps(self, answer_by: float) -> Submitted:
        context, record, claim = self.context, self.record, self.claim
        if self.inline:
            try:
                prediction, inference_ms = await self.predicted  # the steps ran on its thread
            except IdempotencyConflictError:
                assert claim is not None  # only a claimed key can conflict
                return await _replay_after_race(context, claim)
            assert self.answer is not None
            _report(context, record.job_id, self.caller, prediction, inference_ms, self.enqueue_ms, self.final)
            return Submitted(self.answer, prediction=prediction)
        wait_for = max(0.0, answer_by - asyncio.get_running_loop().time())
        try:
            recorded = await context.io(self._record, wait_for)
        except IdempotencyConflictError:
            # The write was refused whole: nothing of this request's exists.
            assert claim is not None  # only a claimed key can conflict
            return await _replay_after_race(context, claim)
        if recorded is None:
            await self.predicted  # raises why the image was refused
            raise TimeoutError("the image waited for the model past the request's deadline")
        message, hit = recorded
        prediction, inference_ms = await self.predicted
        final, response, publish = self._answer(message, hit, prediction, inference_ms)
        if publish is not None or claim is not None:
            await context.io(self._publish, publish)
        _report(context, record.job_id, self.caller, prediction, inference_ms, self.enqueue_ms, final)
        return Submitted(response, prediction=prediction)

    def _inline_steps(self, prediction: Prediction, inference_ms: float) -> None:
        """Inference thread, backends that never block: record, answer, publish, right after the fast answer."""
        recorded = self._record(0.0)  # the image has decoded: no wait
        if recorded is None:
            raise TimeoutError("the request's deadline passed before the job was recorded")
        self.final, self.answer, publish = self._answer(*recorded, prediction, inference_ms)
        if publish is not None or self.claim is not None:
            self._publish(publish)

    def _answer(
        self, message: JobMessage | None, hit: CachedResult | None, prediction: Prediction, inference_ms: float
    ) -> tuple[dict[str, Any] | None, PredictResponse, JobMessage | dict[str, Any] | None]:
        """The job's final result (when known now), the response, and what to publish; sets ``response``
        when a key is claimed."""
        fast = prediction.result(self.context.service.fast_name, inference_ms)
        final: dict[str, Any] | None = self.record.result if hit is not None else None
        publish: JobMessage | dict[str, Any] | None = None
        if message is not None:
            final, publish = self._route(message, prediction, fast)
        response = PredictResponse.build(self.record.job_id, fast, final=final)
        if self.claim is not None:
            self.response = _dumped(response)
        return final, response, publish

    def _record(self, wait_for: float) -> tuple[JobMessage | None, CachedResult | None] | None:
        """I/O thread: the cache lookup, then (once the image decoded) the record's write.

        Returns the message to publish (``None`` on a cache hit) and the hit; ``None`` when the image
        was refused, or did not decode within ``wait_for`` seconds, or the commit stopped meanwhile.
        """
        context, submission, record = self.context, self.submission, self.record
        service = context.service
        shortcuts = service.shortcuts
        hit = None
        if shortcuts.cache is not None and submission.slow is SlowMode.AUTO:
            # Beside the decode: a cache hit needs no slow pass (``always`` asks for a fresh one).
            hit = shortcuts.lookup(self.caller.owner, submission.data)
        if not self.inference.decoded.wait(wait_for) or not self.inference.valid:
            return None  # bad input fails before any job exists
        started = time.perf_counter()
        message = None
        if hit is None:
            job_context = {"request_id": self.caller.request_id}
            if submission.callback_url:
                job_context["callback_url"] = submission.callback_url
            message = service.intake.prepare(record, submission.data, job_context, submission.image_ref)
        if not self._may_write():
            return None
        try:
            if hit is not None:
                shortcuts.record_cached(record, hit, self.claim)
            else:
                service.intake.write(record, self.claim)
        except IdempotencyConflictError:
            with self._gate:
                self.writing = False  # refused whole: nothing to end
            raise
        self.enqueue_ms += (time.perf_counter() - started) * 1000
        return message, hit

    def _route(
        self, message: JobMessage, prediction: Prediction, fast: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, JobMessage | dict[str, Any]]:
        """The cascade's choice: ``(final, final)`` when the fast answer stands (the job's result to
        record), else ``(None, message)`` (the message to publish, the fast answer in its context)."""
        shortcuts = self.context.service.shortcuts
        if shortcuts.cascade.route(self.submission.slow, prediction.probability) is Route.FAST:
            final = shortcuts.fast_final(fast)
            return final, final
        data = self.submission.data
        message = shortcuts.with_fast_answer(
            message, prediction, self.caller.owner, lambda: hashlib.sha256(data).hexdigest()
        )
        return None, message

    def _publish(self, publish: JobMessage | dict[str, Any] | None) -> None:
        """I/O thread: the job's message sent (or the fast answer recorded), then the answer kept for the key.

        ``self.response`` is set before this trip: should the publish land yet the request fail, the
        clean-up keeps that answer for the key.
        """
        service = self.context.service
        job_id = self.record.job_id
        if not self._may_write():  # the deadline passed while this trip waited for a thread
            return
        started = time.perf_counter()
        if isinstance(publish, JobMessage):
            service.intake.send(publish)
        elif publish is not None:
            service.shortcuts.answer_fast(job_id, publish, self.claim)
        self.enqueue_ms += (time.perf_counter() - started) * 1000
        if self.claim is not None and self._may_write():
            assert self.response is not None
            service.idempotency.remember(self.claim, self.response)

    async def _keep_compensating(self, abandon: Callable[[], bool], reason: str) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + COMPENSATE_FOR
        delay = COMPENSATE_FIRST_DELAY
        while loop.time() + delay < give_up_at:
            await asyncio.sleep(delay)
            if await self.context.io(abandon):
                return
            delay = min(delay * 2, COMPENSATE_MAX_DELAY)
        job_id = self.record.job_id
        extra = job_extra(job_id, self.caller.request_id)
        logger.error("job %s could not be ended (%s); the reconciler will", job_id, reason, extra=extra)


def _dumped(response: PredictResponse) -> dict[str, Any]:
    return response.model_dump(mode="json", exclude_unset=True)


def _reason(exc: BaseException) -> str:
    """Why a job was abandoned, for its record (the client reads it)."""
    if isinstance(exc, (TimeoutError, asyncio.CancelledError)):
        return "the request's deadline passed before the job was queued; submit it again"
    if isinstance(exc, TwopassError):
        return f"could not enqueue: {exc}"
    return "the fast model failed on the image"


async def _fast_only(context: ApiContext, submission: Submission) -> Submitted:
    """``slow: never``: the fast model's answer and nothing else (no job, no queue, no store)."""
    prediction, inference_ms = await _Inference(context, submission).start()
    if context.metrics is not None:
        context.metrics.add(Metric.FAST_INFERENCE_MS, inference_ms)
        context.metrics.add(Metric.FAST_ONLY, 1)
        context.metrics.flush()
    response = PredictResponse.fast_only(prediction.result(context.service.fast_name, inference_ms))
    return Submitted(response, prediction=prediction)


async def overloaded(context: ApiContext) -> bool:
    """Whether the queues hold ``max_backlog`` jobs or more (the cached figure; unknown counts as no)."""
    limit = context.settings.max_backlog
    if limit <= 0:
        return False
    gauge = context.backlog
    depth = gauge.value if gauge.fresh else await context.io(gauge.refresh)
    return depth is not None and depth >= limit


async def _shed(context: ApiContext, submission: Submission, caller: Caller) -> Submitted:
    """Over the backlog limit: the fast answer alone, no job, no slow pass (and the response says so).

    Or, when the job asked for it (``on_overload: reject``), a 429 with Retry-After.
    """
    if submission.options.rejects:
        retry_after = str(max(1, math.ceil(context.backlog.ttl)))
        raise HTTPProblemError(
            429,
            "overloaded",
            "the job backlog is over the service's limit; retry after the Retry-After delay, or leave out "
            "on_overload: reject to get the fast answer alone",
            headers={"Retry-After": retry_after},
        )
    service = context.service
    prediction, inference_ms = await _Inference(context, submission).start()
    limit = context.settings.max_backlog
    logger.info("slow pass shed (backlog over %d)", limit, extra={"request_id": caller.request_id})
    if context.metrics is not None:
        context.metrics.add(Metric.FAST_INFERENCE_MS, inference_ms)
        context.metrics.add(Metric.JOBS_SHED, 1)
        context.metrics.flush()
    response = PredictResponse.shed(prediction.result(service.fast_name, inference_ms))
    return Submitted(response, prediction=prediction)


class _Inference:
    """Decode and classify in one trip to the inference pool, from :meth:`start`.

    The future gives the fast prediction (or raises why the image was refused); ``decoded`` is set by
    the inference thread once the decode has ended, ``valid`` saying whether it succeeded, so the I/O
    side can wait for a valid image on its own thread without a round through the event loop.
    ``then`` runs on the same thread after the model (its error is the result's).
    """

    def __init__(
        self,
        context: ApiContext,
        submission: Submission,
        then: Callable[[Prediction, float], None] | None = None,
    ) -> None:
        self.decoded = threading.Event()
        self.valid = False
        self._context, self._submission, self._then = context, submission, then

    def start(self) -> asyncio.Future[tuple[Prediction, float]]:
        """Hand the work to the inference pool; returns its future: the fast prediction, or why the
        image was refused."""
        context, then = self._context, self._then
        service = context.service
        data = self._submission.data
        # An uploaded image came through the bucket, not the request body: the upload limit is its limit.
        limit = context.settings.upload_max_bytes if self._submission.image_ref is not None else None

        def decode_and_classify() -> tuple[Prediction, float]:
            try:
                tensor = service.decode(data, limit)
                self.valid = True  # a valid image: the record's write may start now
            finally:
                self.decoded.set()
            prediction, inference_ms = service.classify(tensor)
            if then is not None:  # on this thread, with the answer at hand
                then(prediction, inference_ms)
            return prediction, inference_ms

        return context.infer(decode_and_classify)


async def _replay_after_race(context: ApiContext, claim: IdempotencyRecord) -> Submitted:
    """Another request with the same key won the race: answer as it did (or 409 while it runs)."""
    earlier = await context.io(context.service.idempotency.replay, claim)
    if earlier is None:
        raise RequestInProgressError("a request with this Idempotency-Key is in progress; retry shortly")
    return Submitted(PredictResponse.model_validate(earlier), replayed=True)


def _report(
    context: ApiContext,
    job_id: str,
    caller: Caller,
    prediction: Prediction,
    inference_ms: float,
    enqueue_ms: float,
    final: dict[str, Any] | None = None,
) -> None:
    name = context.service.fast_name
    extra: dict[str, Any] = job_extra(job_id, caller.request_id)
    how = "queued" if final is None else ("answered from the cache" if final.get("cached") else "answered by fast")
    logger.info("job %s; fast %s=%s (%.1f ms)", how, name, prediction.label, inference_ms, extra=extra)
    if context.metrics is not None:
        context.metrics.add(Metric.FAST_INFERENCE_MS, inference_ms)
        context.metrics.add(Metric.ENQUEUE_MS, enqueue_ms)
        context.metrics.add(Metric.JOBS_ACCEPTED, 1)
        if final is not None:
            context.metrics.add(Metric.CACHE_HITS if final.get("cached") else Metric.CASCADE_ANSWERED, 1)
        context.metrics.flush()

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
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import os
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
    classify, hit = await _decoded_and_looked_up(context, submission, caller)
    commit = _Commit(context, submission, caller, record, claim, classify, hit)
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
    """

    def __init__(
        self,
        context: ApiContext,
        submission: Submission,
        caller: Caller,
        record: JobRecord,
        claim: IdempotencyRecord | None,
        classify: asyncio.Future[tuple[Prediction, float]],
        hit: CachedResult | None,
    ) -> None:
        self.context, self.submission, self.caller = context, submission, caller
        self.record, self.claim, self.classify, self.hit = record, claim, classify, hit
        #: Set once the record's write has begun: from then on a failure must end the job.
        self.writing = False
        #: The answer, once known: kept for the key when a worker already has the job.
        self.response: dict[str, Any] | None = None

    async def run(self, answer_by: float) -> Submitted:
        try:
            async with asyncio.timeout_at(answer_by):
                return await self._steps()
        except BaseException as exc:
            self.classify.cancel()
            if self.writing:
                await self._compensate(_reason(exc))
            raise

    async def _compensate(self, reason: str) -> None:
        """End the job and release its key now; while the store is unreachable, keep trying in the
        background (a bounded while) rather than hold the answer."""
        abandon = functools.partial(
            self.context.service.intake.abandon,
            self.record.job_id, self.claim, reason, record=self.record, response=self.response,
        )  # fmt: skip
        if not await self.context.io(abandon):
            _keep(asyncio.ensure_future(self._keep_compensating(abandon, reason)))

    async def _steps(self) -> Submitted:
        context, record, claim = self.context, self.record, self.claim
        service = context.service
        started = time.perf_counter()
        message = None
        if self.hit is None:
            job_context = {"request_id": self.caller.request_id}
            if self.submission.callback_url:
                job_context["callback_url"] = self.submission.callback_url
            data, image_ref = self.submission.data, self.submission.image_ref
            message = await context.io(service.intake.prepare, record, data, job_context, image_ref)
        self.writing = True
        try:
            if self.hit is not None:
                await context.io(service.shortcuts.record_cached, record, self.hit, claim)
            else:
                await context.io(service.intake.write, record, claim)
        except IdempotencyConflictError:
            self.writing = False  # the write was refused whole: nothing of this request's exists
            assert claim is not None  # only a claimed key can conflict
            return await _replay_after_race(context, claim)
        enqueue_ms = (time.perf_counter() - started) * 1000
        prediction, inference_ms = await self.classify
        fast = prediction.result(service.fast_name, inference_ms)
        final = record.result if self.hit is not None else None
        if message is not None:
            started = time.perf_counter()
            final = await self._route(message, prediction, fast)
            enqueue_ms += (time.perf_counter() - started) * 1000
        response = PredictResponse.build(record.job_id, fast, final=final)
        self.response = _dumped(response)
        if claim is not None:
            await context.io(service.idempotency.remember, claim, self.response)
        _report(context, record.job_id, self.caller, prediction, inference_ms, enqueue_ms, final)
        return Submitted(response, prediction=prediction)

    async def _route(self, message: JobMessage, prediction: Prediction, fast: dict[str, Any]) -> dict[str, Any] | None:
        """The cascade's choice: the job's final result when the fast answer stands, else None (published)."""
        context, submission = self.context, self.submission
        shortcuts = context.service.shortcuts
        if shortcuts.cascade.route(submission.slow, prediction.probability) is Route.FAST:
            final = shortcuts.fast_final(fast)
            # Known before the write: should the write land yet the request fail, the key keeps it.
            self.response = _dumped(PredictResponse.build(message.job_id, fast, final=final))
            await context.io(shortcuts.answer_fast, message.job_id, final, self.claim)
            return final
        message = shortcuts.with_fast_answer(
            message, prediction, self.caller.owner, lambda: hashlib.sha256(submission.data).hexdigest()
        )
        self.response = _dumped(PredictResponse.build(message.job_id, fast))
        await context.io(context.service.intake.send, message)
        return None

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


async def _decoded_and_looked_up(
    context: ApiContext, submission: Submission, caller: Caller
) -> tuple[asyncio.Future[tuple[Prediction, float]], CachedResult | None]:
    """:func:`_decoded`, with the result-cache lookup running beside the decode."""
    shortcuts = context.service.shortcuts
    lookup = None
    if shortcuts.cache is not None and submission.slow is SlowMode.AUTO:
        # Beside the decode: a cache hit needs no slow pass (``always`` asks for a fresh one).
        lookup = asyncio.ensure_future(context.io(shortcuts.lookup, caller.owner, submission.data))
    try:
        classify = await _decoded(context, submission)
        hit: CachedResult | None = await lookup if lookup is not None else None
    except BaseException:
        if lookup is not None:
            lookup.cancel()
        raise
    return classify, hit


async def _fast_only(context: ApiContext, submission: Submission) -> Submitted:
    """``slow: never``: the fast model's answer and nothing else (no job, no queue, no store)."""
    prediction, inference_ms = await (await _decoded(context, submission))
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
    prediction, inference_ms = await (await _decoded(context, submission))
    limit = context.settings.max_backlog
    logger.info("slow pass shed (backlog over %d)", limit, extra={"request_id": caller.request_id})
    if context.metrics is not None:
        context.metrics.add(Metric.FAST_INFERENCE_MS, inference_ms)
        context.metrics.add(Metric.JOBS_SHED, 1)
        context.metrics.flush()
    response = PredictResponse.shed(prediction.result(service.fast_name, inference_ms))
    return Submitted(response, prediction=prediction)


async def _decoded(context: ApiContext, submission: Submission) -> asyncio.Future[tuple[Prediction, float]]:
    """Start decode+classify in one trip to the inference pool; return once the image has decoded.

    Raises why the image was refused; the returned future gives the fast prediction.
    """
    loop = asyncio.get_running_loop()
    decoded = asyncio.Event()
    service = context.service
    data = submission.data
    # An uploaded image came through the bucket, not the request body: the upload limit is its limit.
    limit = context.settings.upload_max_bytes if submission.image_ref is not None else None

    def decode_and_classify() -> tuple[Prediction, float]:
        tensor = service.decode(data, limit)
        loop.call_soon_threadsafe(decoded.set)  # a valid image: the enqueue may start now
        return service.classify(tensor)

    classify = context.infer(decode_and_classify)
    signal: asyncio.Future[Any] = asyncio.ensure_future(decoded.wait())
    pending: set[asyncio.Future[Any]] = {classify, signal}
    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if not decoded.is_set():
        signal.cancel()
        await classify  # raises why the image was refused
    return classify


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

"""The fast path of ``POST /predict``: decode and classify, record and enqueue, answer.

The job record is written as soon as the image has decoded, overlapping the fast model instead of
following it; bad input fails before any job exists. The queue message is sent once the fast model
has answered, because it carries the fast top-1 (the worker compares it with the slow one: agreement)
and because the cascade may find the fast answer confident enough to stand, and then nothing is sent.
A result-cache lookup runs beside the decode; on a hit the record is written already succeeded.
Waiting on the backends is bounded by ``api_deadline_seconds``: past it the client gets 503 with
Retry-After, never a hang.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from twopass.api.body import Submission
from twopass.api.context import ApiContext
from twopass.api.errors import HTTPProblemError
from twopass.api.schemas import PredictResponse
from twopass.cascade import Route, SlowMode
from twopass.exceptions import DependencyTimeoutError, IdempotencyConflictError, RequestInProgressError
from twopass.jobs.base import IdempotencyRecord, JobRecord, new_job_id
from twopass.jobs.cache import CachedResult
from twopass.models.runtime import Prediction
from twopass.observability.logs import job_extra
from twopass.observability.metrics import Metric
from twopass.queue.base import JobMessage

logger = logging.getLogger(__name__)


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
    try:
        async with asyncio.timeout(deadline):
            return await _submit(context, submission, caller)
    except TimeoutError:
        raise DependencyTimeoutError(f"the job store or queue did not answer within {deadline:g} s") from None


async def _submit(context: ApiContext, submission: Submission, caller: Caller) -> Submitted:
    service = context.service
    if submission.slow is SlowMode.NEVER:  # a pure function of the image: nothing to record or replay
        return await _fast_only(context, submission)
    options = submission.options
    deadline_at = options.deadline_at(context.settings)
    claim = submission.claim or service.idempotency.claim(caller.idempotency_key, caller.owner, submission.data)
    if claim is not None and (earlier := await context.io(service.idempotency.replay, claim)) is not None:
        return Submitted(PredictResponse.model_validate(earlier), replayed=True)
    if await _overloaded(context):
        return await _shed(context, submission, caller)
    record = JobRecord(
        job_id=new_job_id(), owner=caller.owner, deadline_at=deadline_at, priority=service.priority(options.priority)
    )
    started = await _record(context, submission, caller, record, claim)
    if isinstance(started, Submitted):
        return started
    return await _complete(context, submission, caller, started, claim)


@dataclass
class _Recorded:
    """A job whose record is written while its fast prediction is still being computed."""

    record: JobRecord
    #: The fast prediction and its inference time, once the fast model has run.
    classify: asyncio.Future[tuple[Prediction, float]]
    #: The result cache's answer, when it had one (the record was written already succeeded).
    hit: CachedResult | None
    #: The queue message still to send; None when the cache answered.
    message: JobMessage | None
    enqueue_ms: float


async def _record(
    context: ApiContext, submission: Submission, caller: Caller, record: JobRecord, claim: IdempotencyRecord | None
) -> _Recorded | Submitted:
    """Once the image has decoded, write its job's record while the fast model runs.

    The answer of a request that won a race for the same Idempotency-Key instead, when one did.
    """
    service = context.service
    job_context = {"request_id": caller.request_id}
    if submission.callback_url:
        job_context["callback_url"] = submission.callback_url
    classify, hit = await _decoded_and_looked_up(context, submission, caller)
    message = None
    try:
        started = time.perf_counter()
        if hit is not None:
            await context.io(service.shortcuts.record_cached, record, hit, claim)
        else:
            message = await context.io(
                service.record_job, record, submission.data, job_context, claim, submission.image_ref
            )
        enqueue_ms = (time.perf_counter() - started) * 1000
    except IdempotencyConflictError:
        classify.cancel()
        assert claim is not None  # only a claimed key can conflict
        return await _replay_after_race(context, claim)
    except BaseException:
        classify.cancel()
        raise
    return _Recorded(record, classify, hit, message, enqueue_ms)


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


async def _complete(
    context: ApiContext, submission: Submission, caller: Caller, job: _Recorded, claim: IdempotencyRecord | None
) -> Submitted:
    """With the fast prediction in: send the job on (or let the fast answer stand), then answer."""
    service = context.service
    record = job.record
    try:
        prediction, inference_ms = await job.classify
    except BaseException:
        if job.message is not None:  # recorded, never to be published: end it rather than leave it to the reconciler
            await context.io(service._abandon, record.job_id, claim, "the fast model failed on the image")
        raise
    fast = prediction.result(service.fast_name, inference_ms)
    final = record.result if job.hit is not None else None
    enqueue_ms = job.enqueue_ms
    if job.message is not None:
        started = time.perf_counter()
        final = await _route(context, submission, caller, job.message, prediction, fast, claim)
        enqueue_ms += (time.perf_counter() - started) * 1000
    response = PredictResponse.build(record.job_id, fast, final=final)
    _report(context, record.job_id, caller, prediction, inference_ms, enqueue_ms, final)
    if claim is not None:
        await context.io(service.idempotency.remember, claim, response.model_dump(mode="json", exclude_unset=True))
    return Submitted(response, prediction=prediction)


async def _route(
    context: ApiContext,
    submission: Submission,
    caller: Caller,
    message: JobMessage,
    prediction: Prediction,
    fast: dict[str, Any],
    claim: IdempotencyRecord | None,
) -> dict[str, Any] | None:
    """The cascade's choice: the job's final result when the fast answer stands, else None (published)."""
    shortcuts = context.service.shortcuts
    if shortcuts.cascade.route(submission.slow, prediction.probability) is Route.FAST:
        final = shortcuts.fast_final(fast)
        await context.io(shortcuts.answer_fast, message.job_id, final, claim)
        return final
    message = shortcuts.with_fast_answer(
        message, prediction, caller.owner, lambda: hashlib.sha256(submission.data).hexdigest()
    )
    await context.io(context.service.publish, message, claim)
    return None


async def _fast_only(context: ApiContext, submission: Submission) -> Submitted:
    """``slow: never``: the fast model's answer and nothing else (no job, no queue, no store)."""
    prediction, inference_ms = await (await _decoded(context, submission))
    if context.metrics is not None:
        context.metrics.add(Metric.FAST_INFERENCE_MS, inference_ms)
        context.metrics.add(Metric.FAST_ONLY, 1)
        context.metrics.flush()
    response = PredictResponse.fast_only(prediction.result(context.service.fast_name, inference_ms))
    return Submitted(response, prediction=prediction)


async def _overloaded(context: ApiContext) -> bool:
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

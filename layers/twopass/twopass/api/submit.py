"""The fast path of ``POST /predict``: decode and classify, record and enqueue, answer.

The enqueue (table write + queue send) starts as soon as the image has decoded and overlaps the fast
model instead of following it; bad input fails before any job exists. Waiting on the backends is
bounded by ``api_deadline_seconds``: past it the client gets 503 with Retry-After, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from twopass.api.body import Submission
from twopass.api.context import ApiContext
from twopass.api.schemas import PredictResponse
from twopass.exceptions import DependencyTimeoutError, IdempotencyConflictError, RequestInProgressError
from twopass.jobs.base import IdempotencyRecord, JobRecord, new_job_id
from twopass.models.runtime import Prediction
from twopass.observability.logs import job_extra
from twopass.observability.metrics import Metric

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
    claim = service.idempotency.claim(caller.idempotency_key, caller.owner, submission.data)
    if claim is not None and (earlier := await context.io(service.idempotency.replay, claim)) is not None:
        return Submitted(PredictResponse.model_validate(earlier), replayed=True)
    record = JobRecord(job_id=new_job_id(), owner=caller.owner)
    job_context = {"request_id": caller.request_id}
    if submission.callback_url:
        job_context["callback_url"] = submission.callback_url
    classify = await _decoded(context, submission.data)
    try:
        started = time.perf_counter()
        await context.io(service.enqueue, record, submission.data, job_context, claim)
        enqueue_ms = (time.perf_counter() - started) * 1000
    except IdempotencyConflictError:
        classify.cancel()
        assert claim is not None  # only a claimed key can conflict
        return await _replay_after_race(context, claim)
    except BaseException:
        classify.cancel()
        raise
    prediction, inference_ms = await classify
    response = PredictResponse.build(record.job_id, prediction.result(service.fast_name, inference_ms))
    _report(context, record.job_id, caller, prediction, inference_ms, enqueue_ms)
    if claim is not None:
        await context.io(service.idempotency.remember, claim, response.model_dump(mode="json", exclude_unset=True))
    return Submitted(response, prediction=prediction)


async def _decoded(context: ApiContext, data: bytes) -> asyncio.Future[tuple[Prediction, float]]:
    """Start decode+classify in one trip to the inference pool; return once the image has decoded.

    Raises why the image was refused; the returned future gives the fast prediction.
    """
    loop = asyncio.get_running_loop()
    decoded = asyncio.Event()
    service = context.service

    def decode_and_classify() -> tuple[Prediction, float]:
        tensor = service.decode(data)
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
    context: ApiContext, job_id: str, caller: Caller, prediction: Prediction, inference_ms: float, enqueue_ms: float
) -> None:
    name = context.service.fast_name
    extra: dict[str, Any] = job_extra(job_id, caller.request_id)
    logger.info("job queued; fast %s=%s (%.1f ms)", name, prediction.label, inference_ms, extra=extra)
    if context.metrics is not None:
        context.metrics.add(Metric.FAST_INFERENCE_MS, inference_ms)
        context.metrics.add(Metric.ENQUEUE_MS, enqueue_ms)
        context.metrics.add(Metric.JOBS_ACCEPTED, 1)
        context.metrics.flush()

"""``/job/{id}`` and ``/jobs``: read, cancel, retry and list jobs, each for its owner only."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from twopass.api.auth import Owner
from twopass.api.context import ApiContext, Context
from twopass.api.cursors import CursorSigner
from twopass.api.docs import ERRORS
from twopass.api.schemas import JobListResponse, JobResponse, JobStatusName
from twopass.config import Settings
from twopass.exceptions import JobNotFoundError
from twopass.jobs.base import DEFAULT_PAGE, MAX_PAGE, JobRecord, JobStatus, is_job_id
from twopass.observability.logs import job_extra
from twopass.observability.metrics import Metric

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

#: The longest ``GET /job/{id}?wait=`` (seconds): inside API Gateway's 29 s and the function's timeout.
WAIT_MAX = 20.0
#: The first re-read of a waiting job, doubling up to :data:`WAIT_MAX_DELAY`.
WAIT_FIRST_DELAY = 0.05
WAIT_MAX_DELAY = 1.0
#: Under Lambda, a wait ends this long before the invocation would time out.
WAIT_ANSWER_MARGIN = 1.0

Wait = Annotated[
    float,
    Query(
        ge=0,
        le=WAIT_MAX,
        description=f"Seconds (0 to {WAIT_MAX:g}) to hold the answer until the job is final (succeeded, failed, "
        "cancelled or expired); the job as it is when they run out. 0: answer at once.",
    ),
]


def _checked(job_id: str) -> str:
    if not is_job_id(job_id):
        raise JobNotFoundError(f"no job {job_id!r}: job ids are 32 hexadecimal characters")
    return job_id


@router.get(
    "/job/{job_id}",
    summary="The slow model's result",
    response_model=JobResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
)
async def get_job(job_id: str, request: Request, context: Context, owner: Owner, wait: Wait = 0.0) -> JobResponse:
    record = await context.io(context.service.control.job, _checked(job_id), owner)
    if wait > 0 and not record.final:
        record = await _wait_final(context, record, owner, min(wait, _time_left(request, context.settings)))
    return JobResponse.from_record(record)


def wait_limit(settings: Settings) -> float:
    """The longest wait a Lambda invocation grants: :data:`WAIT_MAX`, or less so that waits can hold no
    more than ``wait_concurrency`` executions at the stage's full request rate.

    Every waiting read holds an execution for its whole wait, so at ``rate`` requests a second the
    waits alone hold about ``rate × wait`` of them (Little's law): 50 rps of 20 s waits would take
    1,000 executions of the account's concurrency. Capping the wait at ``wait_concurrency / rate``
    bounds that, plus one burst (``ApiThrottleBurstLimit``), whatever the clients ask for; a
    shortened wait answers the job as it is, and clients ask again.
    """
    if settings.wait_concurrency > 0 and settings.api_rate_limit > 0:
        return min(WAIT_MAX, settings.wait_concurrency / settings.api_rate_limit)
    return WAIT_MAX


async def _wait_final(context: ApiContext, record: JobRecord, owner: str, wait: float) -> JobRecord:
    """The job once final, or as it is when ``wait`` seconds have passed.

    Reads back off from 50 ms to 1 s: a job that ends soon is seen soon, a long wait costs about one
    read a second, never a busy loop against the table.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = WAIT_FIRST_DELAY
    while not record.final:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, WAIT_MAX_DELAY)
        record = await context.io(context.service.control.job, record.job_id, owner)
    return record


def _time_left(request: Request, settings: Settings) -> float:
    """Seconds this invocation may still wait: under Lambda, its remaining time less a margin to answer
    (a wait that outlived the function would end in API Gateway's 502, not in the job's state), and
    at most :func:`wait_limit`. Elsewhere (uvicorn) a wait is a coroutine, not an execution: no cut."""
    lambda_context: Any = request.scope.get("aws.context")
    remaining = getattr(lambda_context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return WAIT_MAX
    left_ms: int = remaining()
    return min(wait_limit(settings), max(0.0, left_ms / 1000 - WAIT_ANSWER_MARGIN))


@router.delete(
    "/job/{job_id}",
    summary="Cancel a queued or running job",
    description="A queued job is never run; a running one has its slow result discarded. Answers the cancelled "
    'job; 409 {"error": "job_final"} when it had already ended.',
    response_model=JobResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
)
async def cancel_job(job_id: str, context: Context, owner: Owner) -> JobResponse:
    record = await context.io(context.service.control.cancel, _checked(job_id), owner)
    logger.info("job cancelled by its owner", extra=job_extra(job_id))
    if context.metrics is not None:
        context.metrics.add(Metric.JOBS_CANCELLED, 1)
        context.metrics.flush()
    return JobResponse.from_record(record)


@router.post(
    "/job/{job_id}/retry",
    summary="Run a failed, expired or cancelled job again",
    description="The job goes back to queued under the same id (attempts carry on, earlier outcomes are kept in "
    'history) while its image is still kept. 409 {"error": "job_not_retryable"} for a job in another state, '
    '410 {"error": "image_gone"} once its image has expired.',
    response_model=JobResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
)
async def retry_job(job_id: str, context: Context, owner: Owner) -> JobResponse:
    record = await context.io(context.service.control.retry, _checked(job_id), owner)
    logger.info("job queued again by its owner", extra=job_extra(job_id))
    return JobResponse.from_record(record)


@router.get(
    "/jobs",
    summary="List your jobs, newest first",
    response_model=JobListResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
)
async def list_jobs(
    context: Context,
    owner: Owner,
    status: Annotated[JobStatusName | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Jobs per page, 1 to {MAX_PAGE}.")] = DEFAULT_PAGE,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page, to get the next one.")] = None,
) -> JobListResponse:
    wanted = JobStatus(status) if status is not None else None
    # Cursors are signed for this caller and listing: an altered or foreign one is a 400 before the store.
    signer = CursorSigner(context.settings.cursor_secret)
    position = None if cursor is None else signer.open(cursor, owner, wanted)
    records, next_position = await context.io(
        lambda: context.service.control.jobs(owner, status=wanted, limit=limit, cursor=position)
    )
    next_cursor = None if next_position is None else signer.seal(next_position, owner, wanted)
    return JobListResponse(jobs=[JobResponse.from_record(r) for r in records], next_cursor=next_cursor)

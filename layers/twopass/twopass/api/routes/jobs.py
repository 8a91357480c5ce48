"""``/job/{id}`` and ``/jobs``: read, cancel, retry and list jobs, each for its owner only."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query

from twopass.api.auth import Owner
from twopass.api.context import Context
from twopass.api.docs import ERRORS
from twopass.api.schemas import JobListResponse, JobResponse, JobStatusName
from twopass.exceptions import JobNotFoundError
from twopass.jobs.base import DEFAULT_PAGE, MAX_PAGE, JobStatus, is_job_id
from twopass.observability.logs import job_extra
from twopass.observability.metrics import Metric

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])


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
async def get_job(job_id: str, context: Context, owner: Owner) -> JobResponse:
    record = await context.io(context.service.job, _checked(job_id), owner)
    return JobResponse.from_record(record)


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
    record = await context.io(context.service.cancel, _checked(job_id), owner)
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
    record = await context.io(context.service.retry, _checked(job_id), owner)
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
    records, next_cursor = await context.io(
        lambda: context.service.jobs(owner, status=wanted, limit=limit, cursor=cursor)
    )
    return JobListResponse(jobs=[JobResponse.from_record(r) for r in records], next_cursor=next_cursor)

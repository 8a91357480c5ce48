"""``GET /job/{id}``: the slow model's result, for the job's owner only."""

from __future__ import annotations

from fastapi import APIRouter

from twopass.api.auth import Owner
from twopass.api.context import Context
from twopass.api.docs import ERRORS
from twopass.api.schemas import JobResponse
from twopass.exceptions import JobNotFoundError
from twopass.jobs.base import is_job_id

router = APIRouter(tags=["jobs"])


@router.get(
    "/job/{job_id}",
    summary="The slow model's result",
    response_model=JobResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
)
async def get_job(job_id: str, context: Context, owner: Owner) -> JobResponse:
    if not is_job_id(job_id):
        raise JobNotFoundError(f"no job {job_id!r}: job ids are 32 hexadecimal characters")
    record = await context.io(context.service.job, job_id, owner)
    return JobResponse.from_record(record)

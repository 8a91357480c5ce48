"""``POST /batches`` and ``GET /batches/{batch_id}``: many images in one call, and their progress."""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from twopass.api.auth import Owner
from twopass.api.body import json_limit, model_from_json, parse_json, read_capped
from twopass.api.context import Context, request_id
from twopass.api.docs import ERRORS
from twopass.api.schemas import PriorityName
from twopass.api.usecases.batches import batch_status, submit_batch
from twopass.api.usecases.control import JobOptions
from twopass.api.usecases.submit import Caller
from twopass.cascade import SlowModeName, parse_mode
from twopass.exceptions import InvalidRequestError, JobNotFoundError
from twopass.jobs.base import MAX_BATCH_ITEMS

router = APIRouter(tags=["batches"])

_BATCH_ID = re.compile(r"[0-9a-f]{32}")


class BatchRequest(BaseModel):
    """JSON body of ``POST /batches``."""

    model_config = ConfigDict(extra="forbid")

    items: list[Any] = Field(
        description=f'1 to {MAX_BATCH_ITEMS} items, each {{"image_data": "<base64>"}} or {{"upload_id": "<id>"}}; '
        "a bad item is answered with its own error and never fails the others. The whole body is within the "
        "API's body limit (as one POST /predict's)."
    )
    slow: SlowModeName | None = Field(default=None, description="As on POST /predict, for every item.")
    deadline_seconds: float | None = Field(default=None, strict=True, description="As on POST /predict, every job.")
    priority: PriorityName | None = Field(default=None, description="As on POST /predict, for every job.")
    on_overload: Literal["shed", "reject"] | None = Field(
        default=None, description="As on POST /predict: shed answers every item with the fast model alone."
    )


@router.post(
    "/batches",
    summary="Classify many images with the fast model in one batch and queue a slow job for each",
    responses=ERRORS,
)
async def post_batch(request: Request, context: Context, owner: Owner) -> dict[str, Any]:
    """``{"batch_id", "items": [{"index", "job_id", "<fast model>": "<label>", "fast", ...} | {"index", "error",
    "detail"}]}``, items in input order."""
    body = await read_capped(request, json_limit(context.settings))
    if not body:
        raise InvalidRequestError("empty_body", 'the body is empty: send {"items": [{"image_data": "<base64>"}, ...]}')
    fields = model_from_json(BatchRequest, parse_json(body))
    options = JobOptions(fields.deadline_seconds, fields.priority, fields.on_overload)
    caller = Caller(owner, request_id(request))
    return await submit_batch(context, fields.items, caller, options, parse_mode(fields.slow))


@router.get("/batches/{batch_id}", summary="A batch's progress: counts by status and every item", responses=ERRORS)
async def get_batch(batch_id: str, context: Context, owner: Owner) -> dict[str, Any]:
    """``{"batch_id", "created_at", "total", "done", "counts": {status: n, ..., "refused": n}, "items": [...]}``:
    each item is its job as ``GET /job`` shows it (with the slow result once done), or its error."""
    service = context.service
    batch = await context.io(service.store.get_batch, batch_id) if _BATCH_ID.fullmatch(batch_id) else None
    if batch is None or batch.owner != owner:
        raise JobNotFoundError(f"no batch {batch_id!r} (unknown or expired)")
    jobs = await context.io(service.store.get_many, batch.job_ids)
    return batch_status(batch, jobs)

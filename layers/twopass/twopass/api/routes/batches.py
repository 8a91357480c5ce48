"""``POST /batches`` and ``GET /batches/{batch_id}``: many images in one call, and their progress."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request

from twopass.api.auth import Owner
from twopass.api.body import json_limit, model_from_json, parse_json, read_capped
from twopass.api.context import Context, request_id
from twopass.api.docs import ERRORS
from twopass.api.schemas import BatchRequest, BatchResponse, BatchStatusResponse
from twopass.api.usecases.batches import batch_status, submit_batch
from twopass.api.usecases.control import JobOptions
from twopass.api.usecases.submit import Caller
from twopass.cascade import parse_mode
from twopass.exceptions import InvalidRequestError, JobNotFoundError

router = APIRouter(tags=["batches"])

_BATCH_ID = re.compile(r"[0-9a-f]{32}")


@router.post(
    "/batches",
    summary="Classify many images with the fast model in one batch and queue a slow job for each",
    response_model=BatchResponse,
    response_model_exclude_unset=True,
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


@router.get(
    "/batches/{batch_id}",
    summary="A batch's progress: counts by status and every item",
    response_model=BatchStatusResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
)
async def get_batch(batch_id: str, context: Context, owner: Owner) -> dict[str, Any]:
    """``{"batch_id", "created_at", "total", "done", "counts": {status: n, ..., "refused": n}, "items": [...]}``:
    each item is its job as ``GET /job`` shows it (with the slow result once done), or its error."""
    service = context.service
    batch = await context.io(service.store.get_batch, batch_id) if _BATCH_ID.fullmatch(batch_id) else None
    if batch is None or batch.owner != owner:
        raise JobNotFoundError(f"no batch {batch_id!r} (unknown or expired)")
    jobs = await context.io(service.store.get_many, batch.job_ids)
    return batch_status(batch, jobs)

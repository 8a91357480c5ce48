"""``POST /predict`` and ``GET /predict/test``: the fast answer now, the slow job queued."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response

from twopass.api.auth import Owner
from twopass.api.body import Submission, read_submission
from twopass.api.context import Context
from twopass.api.docs import ERRORS, PREDICT_BODY
from twopass.api.schemas import PredictResponse
from twopass.api.submit import Caller, Submitted, submit

router = APIRouter(tags=["predict"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Any 1-255 printable characters: a retry with the same key and image gets the first answer "
        "again (Idempotent-Replayed: true) instead of a second job.",
    ),
]
CallbackURL = Annotated[
    str | None,
    Query(description="https URL that receives a signed POST when the slow result is final (raw image bodies)."),
]


def _request_id(request: Request) -> str:
    context = request.scope.get("aws.context")
    lambda_id: Any = getattr(context, "aws_request_id", None)
    return request.headers.get("x-request-id") or lambda_id or uuid.uuid4().hex


def _answer(submitted: Submitted, response: Response) -> PredictResponse:
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return submitted.response


@router.post(
    "/predict",
    summary="Classify now with the fast model and queue the slow model",
    response_model=PredictResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
    openapi_extra={"requestBody": PREDICT_BODY},
)
async def predict(
    request: Request,
    response: Response,
    context: Context,
    owner: Owner,
    idempotency_key: IdempotencyKey = None,
    callback_url: CallbackURL = None,
) -> PredictResponse:
    submission = await read_submission(request, context.settings, callback_url)
    caller = Caller(owner, _request_id(request), idempotency_key)
    return _answer(await submit(context, submission, caller), response)


@router.get(
    "/predict/test",
    summary="/predict on the bundled cat photo",
    response_model=PredictResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
)
async def predict_test(
    request: Request, response: Response, context: Context, owner: Owner, idempotency_key: IdempotencyKey = None
) -> PredictResponse:
    submission = Submission(context.service.sample_image())
    return _answer(await submit(context, submission, Caller(owner, _request_id(request), idempotency_key)), response)

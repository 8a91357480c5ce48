"""``POST /predict`` and ``GET /predict/test``: the fast answer now, the slow job queued."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from twopass.api.auth import Owner
from twopass.api.body import Submission, read_submission
from twopass.api.context import Context, request_id
from twopass.api.docs import ERRORS, PREDICT_BODY
from twopass.api.schemas import PredictResponse, PriorityName
from twopass.api.usecases import uploads
from twopass.api.usecases.control import JobOptions, OverloadChoice
from twopass.api.usecases.submit import Caller, Submitted, submit
from twopass.cascade import SlowModeName

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

SlowQuery = Annotated[
    SlowModeName | None,
    Query(
        description="auto (default): queue the slow model unless the cascade finds the fast answer confident "
        "enough; always: queue it (and bypass the result cache); never: the fast answer only, no job. "
        "For raw image bodies; a JSON body's slow field wins.",
    ),
]


DeadlineSeconds = Annotated[
    float | None,
    Query(description="Seconds within which a worker must start the slow job, else it ends expired (raw bodies)."),
]
PriorityParam = Annotated[
    PriorityName | None, Query(description="high: the high-priority queue, taken first; normal (raw bodies).")
]
OnOverload = Annotated[
    OverloadChoice | None,
    Query(description="Over the backlog limit: shed (the fast answer alone) or reject (429) (raw bodies)."),
]


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
    slow: SlowQuery = None,
    deadline_seconds: DeadlineSeconds = None,
    priority: PriorityParam = None,
    on_overload: OnOverload = None,
) -> PredictResponse:
    options = JobOptions(deadline_seconds, priority, on_overload)
    submission = await read_submission(request, context.settings, callback_url, slow, options)
    caller = Caller(owner, request_id(request), idempotency_key)
    if submission.upload_id is not None:
        return _answer(await uploads.submit_upload(context, submission, caller), response)
    return _answer(await submit(context, submission, caller), response)


@router.get(
    "/predict/test",
    summary="/predict on the bundled cat photo",
    response_model=PredictResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
)
async def predict_test(
    request: Request,
    response: Response,
    context: Context,
    owner: Owner,
    idempotency_key: IdempotencyKey = None,
    deadline_seconds: DeadlineSeconds = None,
    priority: PriorityParam = None,
    on_overload: OnOverload = None,
) -> PredictResponse:
    options = JobOptions(deadline_seconds, priority, on_overload)
    submission = Submission(context.service.sample_image(), options=options)
    return _answer(await submit(context, submission, Caller(owner, request_id(request), idempotency_key)), response)

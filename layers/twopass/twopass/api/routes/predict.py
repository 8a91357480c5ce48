"""``POST /predict`` and ``GET /predict/test``: the fast answer now, the slow job queued."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

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

IDEMPOTENCY_KEY_HELP = (
    "Any 1-255 printable characters: a retry with the same key and image gets the first answer "
    "again (Idempotent-Replayed: true) instead of a second job."
)


class PredictQuery(BaseModel):
    """The query parameters of ``POST /predict``; ``GET /predict/test`` takes the job options among them."""

    callback_url: str | None = Field(
        None, description="https URL that receives a signed POST when the slow result is final (raw image bodies)."
    )
    slow: SlowModeName | None = Field(
        None,
        description="auto (default): queue the slow model unless the cascade finds the fast answer confident "
        "enough; always: queue it (and bypass the result cache); never: the fast answer only, no job. "
        "For raw image bodies; a JSON body's slow field wins.",
    )
    deadline_seconds: float | None = Field(
        None, description="Seconds within which a worker must start the slow job, else it ends expired (raw bodies)."
    )
    priority: PriorityName | None = Field(
        None, description="high: the high-priority queue, taken first; normal (raw bodies)."
    )
    on_overload: OverloadChoice | None = Field(
        None, description="Over the backlog limit: shed (the fast answer alone) or reject (429) (raw bodies)."
    )


#: The query parameters of each route, in the documented order.
PREDICT_QUERY = tuple(PredictQuery.model_fields)
TEST_QUERY = ("deadline_seconds", "priority", "on_overload")
_NOTHING_GIVEN = PredictQuery.model_validate({})


def read_query(request: Request, names: tuple[str, ...]) -> PredictQuery:
    """The route's query parameters, validated in one pass; a 422 naming each bad one as FastAPI's
    declared parameters would (``query.<name>: <why>``). Unknown parameters are ignored, as before."""
    params = request.query_params
    given = {name: params[name] for name in names if name in params}
    if not given:
        return _NOTHING_GIVEN
    try:
        return PredictQuery.model_validate(given)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from None


def documented(names: tuple[str, ...]) -> dict[str, Any]:
    """``openapi_extra`` listing ``names`` and the ``Idempotency-Key`` header as FastAPI lists
    parameters declared one by one (tests/unit/test_predict_query.py compares the two)."""
    properties = PredictQuery.model_json_schema()["properties"]
    parameters: list[dict[str, Any]] = []
    for name in names:
        schema = {k: v for k, v in properties[name].items() if k != "default"}
        parameters.append(
            {"name": name, "in": "query", "required": False, "schema": schema, "description": schema["description"]}
        )
    header = {"anyOf": [{"type": "string"}, {"type": "null"}], "description": IDEMPOTENCY_KEY_HELP}
    parameters.append(
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {**header, "title": "Idempotency-Key"},
            "description": IDEMPOTENCY_KEY_HELP,
        }
    )
    return {"parameters": parameters}


def _answer(submitted: Submitted, response: Response) -> PredictResponse:
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return submitted.response


# The parameters are read by ``read_query`` rather than declared: FastAPI solves each declared one
# on every request, a sixth of what the app adds to the model on this path; they are documented from
# the same model, so the OpenAPI document lists them as before.
@router.post(
    "/predict",
    summary="Classify now with the fast model and queue the slow model",
    response_model=PredictResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
    openapi_extra={"requestBody": PREDICT_BODY, **documented(PREDICT_QUERY)},
)
async def predict(request: Request, response: Response, context: Context, owner: Owner) -> PredictResponse:
    query = read_query(request, PREDICT_QUERY)
    options = JobOptions(query.deadline_seconds, query.priority, query.on_overload)
    submission = await read_submission(request, context.settings, query.callback_url, query.slow, options)
    caller = Caller(owner, request_id(request), request.headers.get("idempotency-key"))
    if submission.upload_id is not None:
        return _answer(await uploads.submit_upload(context, submission, caller), response)
    return _answer(await submit(context, submission, caller), response)


@router.get(
    "/predict/test",
    summary="/predict on the bundled cat photo",
    response_model=PredictResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
    openapi_extra=documented(TEST_QUERY),
)
async def predict_test(request: Request, response: Response, context: Context, owner: Owner) -> PredictResponse:
    query = read_query(request, TEST_QUERY)
    options = JobOptions(query.deadline_seconds, query.priority, query.on_overload)
    submission = Submission(context.service.sample_image(), options=options)
    caller = Caller(owner, request_id(request), request.headers.get("idempotency-key"))
    return _answer(await submit(context, submission, caller), response)

"""The Open Inference Protocol (KServe v2) on the same app: health, metadata, and inference.

Clients built for Triton, KServe, Seldon or OpenVINO call twopass unchanged. Both models are listed;
``infer`` runs on the fast model through the same submit path as ``POST /predict`` (limits, owner,
Idempotency-Key, deadline), so each image also gets a slow job, whose id comes back in the
response's ``parameters.twopass_job_id``. The slow model answers through the queue only: inference
on its name is a 400 that says where its results are. Errors here take the protocol's shape,
``{"error": "<what went wrong>"}``, with the statuses the rest of the API uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from twopass import __version__
from twopass.api.auth import Owner, caller
from twopass.api.body import Submission, json_limit, read_capped
from twopass.api.context import ApiContext, Context, request_id
from twopass.api.errors import RETRY_AFTER, HTTPProblemError, problem_for
from twopass.api.oip import codec as oip
from twopass.api.services.service import TwopassService
from twopass.api.usecases.submit import Caller, submit
from twopass.cascade import SlowMode
from twopass.exceptions import TwopassError
from twopass.models.pack import count_labels
from twopass.models.runtime import Prediction

logger = logging.getLogger(__name__)


def oip_error(exc: Exception) -> JSONResponse:
    """Any failure as the protocol's ``{"error": ...}``, with the status and headers the API gives it."""
    headers: dict[str, str] | None = None
    if isinstance(exc, TwopassError):
        status, code, detail = problem_for(exc)
        headers = exc.headers if isinstance(exc, HTTPProblemError) else None
        if status == 500:
            logger.error("unexpected twopass error", exc_info=exc)
            detail = "internal error"
        elif status >= 500:
            logger.error("%s: %s", code, detail)
    elif isinstance(exc, StarletteHTTPException):
        status, detail, headers = exc.status_code, str(exc.detail), dict(exc.headers or {}) or None
    elif isinstance(exc, RequestValidationError):
        where = (".".join(str(p) for p in e.get("loc", ())) for e in exc.errors())
        status, detail = 400, "; ".join(f"{w}: invalid" for w in where) or "invalid request"
    else:
        # Never a stack trace to the client; the log has it.
        logger.error("unhandled error", exc_info=exc)
        status, detail = 500, "internal error"
    if status in (409, 503) and headers is None:
        headers = {"Retry-After": RETRY_AFTER}
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


class OipRoute(APIRoute):
    """A route whose every error, its dependencies' (the API key) and a wrong method's included,
    answers in the protocol's shape rather than the rest of the API's ``{"error", "detail"}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - every failure, unexpected ones too, gets the protocol's shape
                return oip_error(exc)

        return handle

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.methods and scope["method"] not in self.methods:
            allow = {"Allow": ", ".join(sorted(self.methods))}
            refused = StarletteHTTPException(405, f"{scope['method']} is not allowed here", headers=allow)
            await oip_error(refused)(scope, receive, send)
            return
        await super().handle(scope, receive, send)


TAGS: list[str | Enum] = ["open inference protocol"]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": oip.OipError, "description": text}
    for code, text in (
        (
            400,
            "Not an inference request twopass can serve (shape, datatype, names, base64, image), or the slow "
            "model's name.",
        ),
        (403, "Missing or invalid x-api-key header."),
        (404, "No such model (or version)."),
        (409, "A request with the same Idempotency-Key is still in progress."),
        (413, "An image or the body is over the byte or pixel limit."),
        (415, "A Content-Encoding other than gzip or deflate."),
        (422, "The Idempotency-Key was used with another image."),
        (503, "A backing service or the model is unavailable or too slow; retry after the Retry-After delay."),
    )
}
#: Open, like /health: liveness and readiness probes call them without a key.
open_router = APIRouter(tags=TAGS, route_class=OipRoute)
router = APIRouter(tags=TAGS, route_class=OipRoute, dependencies=[Depends(caller)], responses=ERRORS)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="As on POST /predict: a retry with the same key and images gets the same jobs and answer.",
    ),
]


# ---------------------------------------------------------------- health and metadata


@open_router.get("/v2/health/live", summary="OIP: server live", response_model=oip.ServerLive)
async def server_live() -> oip.ServerLive:
    return oip.ServerLive(live=True)


@open_router.get(
    "/v2/health/ready",
    summary="OIP: server ready (the fast model is loaded)",
    response_model=oip.ServerReady,
    responses={400: {"model": oip.ServerReady, "description": "Not ready: the fast model could not be loaded."}},
)
async def server_ready(context: Context) -> Response:
    try:
        await context.infer(_load_fast_model, context)
    except TwopassError as exc:
        logger.warning("not ready: %s", exc)
        # The protocol: 200 is ready, a 4xx is not.
        return JSONResponse({"ready": False}, status_code=400)
    return JSONResponse({"ready": True})


def _load_fast_model(context: ApiContext) -> None:
    # Loading reads the model file and builds a session: off the event loop.
    _ = context.service.classifier


@router.get("/v2", summary="OIP: server metadata", response_model=oip.ServerMetadata)
async def server_metadata() -> oip.ServerMetadata:
    return oip.ServerMetadata(name="twopass", version=__version__, extensions=list(oip.EXTENSIONS))


@dataclass(frozen=True)
class Model:
    card: dict[str, Any]
    fast: bool

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def version(self) -> str:
        return str(self.card["version"])


async def _model(context: ApiContext, name: str, version: str | None = None) -> Model:
    """The model called ``name`` (and ``version``, when given): 404 for any other."""
    service = context.service
    fast = service.classifier.card.to_dict()
    model = Model(fast, fast=True) if name == fast["name"] else None
    if model is None:
        slow = await context.io(service.reports.slow_card)
        if slow is not None and name == slow.get("name"):
            model = Model(slow, fast=False)
    if model is None:
        raise HTTPProblemError(404, "not_found", f"unknown model {name!r}: the fast model is {fast['name']!r}")
    if version is not None and version != model.version:
        raise HTTPProblemError(404, "not_found", f"model {name!r} has version {model.version!r}, not {version!r}")
    return model


def _metadata(model: Model) -> oip.ModelMetadata:
    return oip.model_metadata(model.card, classes=count_labels(model.card))


async def _ready(context: ApiContext, model: Model) -> Response:
    ready = True
    if not model.fast:
        # The slow model is ready when a worker is running it (scaled to zero, jobs wait in the queue).
        beats = await context.io(context.service.store.workers)
        ready = any(b.age() <= context.settings.worker_stale_seconds for b in beats)
    return JSONResponse({"name": model.name, "ready": ready}, status_code=200 if ready else 400)


READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": oip.ModelReady, "description": "Not ready (the slow model: no live worker)."}
}


@router.get("/v2/models/{model_name}", summary="OIP: model metadata", response_model=oip.ModelMetadata)
async def model_metadata(model_name: str, context: Context) -> oip.ModelMetadata:
    return _metadata(await _model(context, model_name))


@router.get(
    "/v2/models/{model_name}/versions/{model_version}",
    summary="OIP: model metadata (one version)",
    response_model=oip.ModelMetadata,
)
async def model_version_metadata(model_name: str, model_version: str, context: Context) -> oip.ModelMetadata:
    return _metadata(await _model(context, model_name, model_version))


@router.get(
    "/v2/models/{model_name}/ready",
    summary="OIP: model ready",
    response_model=oip.ModelReady,
    responses=READY_RESPONSES,
)
async def model_ready(model_name: str, context: Context) -> Response:
    return await _ready(context, await _model(context, model_name))


@router.get(
    "/v2/models/{model_name}/versions/{model_version}/ready",
    summary="OIP: model ready (one version)",
    response_model=oip.ModelReady,
    responses=READY_RESPONSES,
)
async def model_version_ready(model_name: str, model_version: str, context: Context) -> Response:
    return await _ready(context, await _model(context, model_name, model_version))


# ---------------------------------------------------------------- inference

INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": oip.InferResponse,
        "description": "The fast model's outputs, and each image's slow job id in parameters.twopass_job_id. With "
        "binary outputs: application/octet-stream, the JSON (Inference-Header-Content-Length bytes) then the data.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    "/v2/models/{model_name}/infer",
    summary="OIP: classify with the fast model and queue the slow one",
    response_model=oip.InferResponse,
    responses=INFER_RESPONSES,
    openapi_extra={"requestBody": oip.INFER_BODY},
)
async def infer(
    model_name: str, request: Request, context: Context, owner: Owner, idempotency_key: IdempotencyKey = None
) -> Response:
    return await _infer(context, await _model(context, model_name), request, owner, idempotency_key)


@router.post(
    "/v2/models/{model_name}/versions/{model_version}/infer",
    summary="OIP: classify with the fast model (one version) and queue the slow one",
    response_model=oip.InferResponse,
    responses=INFER_RESPONSES,
    openapi_extra={"requestBody": oip.INFER_BODY},
)
async def infer_version(
    model_name: str,
    model_version: str,
    request: Request,
    context: Context,
    owner: Owner,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _infer(context, await _model(context, model_name, model_version), request, owner, idempotency_key)


@dataclass(frozen=True)
class Answer:
    """One image's answer: every class's probability, and its slow job unless none was asked for."""

    distribution: np.ndarray
    job_id: str | None = None
    replayed: bool = False


async def _infer(
    context: ApiContext, model: Model, request: Request, owner: str, idempotency_key: str | None
) -> Response:
    if not model.fast:
        fast = context.service.fast_name
        raise HTTPProblemError(
            400,
            "slow_model_async",
            f"{model.name!r} is the slow model: it runs behind a queue, not on request. POST to "
            f"/v2/models/{fast}/infer instead: its answer is {fast}'s, and parameters.{oip.JOB_ID_PARAMETER} is "
            f"the job in which {model.name} classifies the same image; read its result at GET /job/{{id}}",
        )
    settings = context.settings
    limit = json_limit(settings)
    body = oip.decompress(await read_capped(request, limit), request.headers.get("content-encoding"), limit)
    json_part, binary = oip.split_body(body, request.headers.get("inference-header-content-length"))
    call = oip.parse_infer(json_part, binary, settings.max_image_bytes)
    answers = await _submit_all(context, call, owner, request_id(request), idempotency_key)
    service = context.service
    queued = call.slow is not SlowMode.NEVER
    encoded = oip.encode_response(
        call,
        np.stack([a.distribution for a in answers]),
        service.classifier.labels,
        model_name=model.name,
        model_version=model.version,
        job_ids=[a.job_id or "" for a in answers] if queued else None,
    )
    headers = {}
    if encoded.header_length is not None:
        headers["Inference-Header-Content-Length"] = str(encoded.header_length)
    if queued and all(a.replayed for a in answers):
        headers["Idempotent-Replayed"] = "true"
    return Response(encoded.body, media_type=encoded.media_type, headers=headers)


async def _submit_all(
    context: ApiContext, call: oip.InferCall, owner: str, request_id: str, key: str | None
) -> list[Answer]:
    """One ``submit`` per image (one slow job each, unless ``twopass_slow`` says none), side by side.

    With several images, all are first checked from their headers, so one bad image fails the call
    before any job exists; each gets its own Idempotency-Key derived from the call's.
    """
    service = context.service
    images = call.images
    if len(images) > 1 and call.slow is not SlowMode.NEVER:
        for index, image in enumerate(images):
            oip.probe(index, image, context.settings.max_image_pixels)
    keys = _image_keys(service, key, owner, len(images))

    async def one(index: int, image: bytes) -> Answer:
        submitted = await submit(context, Submission(image, slow=call.slow), Caller(owner, request_id, keys[index]))
        if submitted.prediction is not None:
            distribution = _distribution(submitted.prediction)
        else:
            # A replay: the first answer was kept, not every class's probability. The model is
            # deterministic, so running it again on the same image gives the same tensor.
            distribution = await _classify_again(context, image)
        return Answer(distribution, submitted.response.job_id, submitted.replayed)

    return await _each(images, one)


def _image_keys(service: TwopassService, key: str | None, owner: str, count: int) -> list[str | None]:
    """The Idempotency-Key of each image: the call's own for one image (as on /predict), else one per
    position derived from it (a retry of the same images replays each; another image in a position is a 422)."""
    if key is None:
        return [None] * count
    service.idempotency.claim(key, owner, b"")  # refuses a malformed key, as /predict does
    if count == 1:
        return [key]
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return [f"oip:{digest}:{index}" for index in range(count)]


async def _classify_again(context: ApiContext, image: bytes) -> np.ndarray:
    """Every class's probability for an image whose answer was replayed (no job, no metrics: a lookup)."""
    service = context.service

    def decode_and_classify() -> Prediction:
        prediction, _ = service.classify(service.decode(image))
        return prediction

    return _distribution(await context.infer(decode_and_classify))


async def _each(images: list[bytes], work: Callable[[int, bytes], Coroutine[Any, Any, Answer]]) -> list[Answer]:
    """``work`` on every image at once; the first failure (in input order) is the call's, naming its image."""
    results = await asyncio.gather(*(work(i, image) for i, image in enumerate(images)), return_exceptions=True)
    for index, result in enumerate(results):
        if isinstance(result, TwopassError) and len(images) > 1:
            status, code, detail = problem_for(result)
            headers = result.headers if isinstance(result, HTTPProblemError) else None
            if not detail.startswith(f"image {index}"):
                detail = f"image {index}: {detail}"
            raise HTTPProblemError(status, code, detail, headers) from result
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, Answer)]


def _distribution(prediction: Prediction) -> np.ndarray:
    if prediction.distribution is None:  # every Classifier sets it; a guard for the type checker
        raise TwopassError("the fast model gave no class probabilities")
    return prediction.distribution

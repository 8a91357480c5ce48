"""The FastAPI application: the seed's endpoints over :class:`~twopass.api.service.TwopassService`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from twopass import __version__
from twopass.api import errors
from twopass.api.errors import ApiError
from twopass.api.schemas import ErrorResponse, JobResponse, PredictRequest, PredictResponse
from twopass.api.service import TwopassService
from twopass.config import Settings
from twopass.exceptions import IdempotencyConflictError
from twopass.jobs.base import IdempotencyRecord, JobRecord, JobStatus, is_job_id
from twopass.models.runtime import Prediction
from twopass.notify.guard import CallbackURLError, check_url
from twopass.observability import logs
from twopass.observability.logs import job_extra
from twopass.observability.metrics import Metric, MetricsSink

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Paths that need no API key: liveness for load balancers, and the docs.
OPEN_PATHS = frozenset({"/health", "/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"})

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "The body is not a usable image (bad base64, not an image, truncated, unsupported mode)."),
        (403, "Missing or invalid x-api-key header."),
        (404, "No such job (or it has expired)."),
        (409, "A request with the same Idempotency-Key is still in progress."),
        (413, "The image is over the byte or pixel limit."),
        (415, "The body is neither JSON nor an image."),
        (422, "The JSON does not match the schema."),
        (503, "A backing service is unavailable; retry after the Retry-After delay."),
    )
}

_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _model_result(model: str, prediction: Prediction, inference_ms: float) -> dict[str, Any]:
    return {
        "model": model,
        "label": prediction.label,
        "top_k": prediction.top_k(),
        "inference_ms": round(inference_ms, 3),
    }


def job_body(record: JobRecord) -> dict[str, Any]:
    """The seed's ``{id: {"prediction": label}}`` and the full lifecycle beside it."""
    label = record.result.get("label") if record.result and record.status is JobStatus.SUCCEEDED else None
    return {
        record.job_id: {"prediction": label},
        "job_id": record.job_id,
        "status": record.status.value,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "attempts": record.attempts,
        "slow": record.result if record.status is JobStatus.SUCCEEDED else None,
        "error": record.error,
    }


def create_app(
    service: TwopassService | None = None, settings: Settings | None = None, *, emit_metrics: bool = True
) -> FastAPI:
    """Build the app. Without ``service`` one is built from the environment on first use."""
    settings = settings or (service.settings if service else Settings.from_env())
    app = FastAPI(
        title="twopass",
        version=__version__,
        description="A fast model answers at once; a slow, more accurate model follows through a queue.",
    )
    logs.configure(settings.log_level, service="twopass-api", fmt=settings.log_format)
    errors.install(app)
    metrics = MetricsSink(service="twopass-api") if emit_metrics else None
    keys = frozenset(k.strip() for k in settings.api_keys.split(",") if k.strip())
    if keys:
        _require_api_key(app, keys)
    # Inference is CPU-bound and blocking: a bounded pool keeps the event loop free and caps
    # parallel model calls at what the cores can actually run (the gibbs problem).
    inference_pool = ThreadPoolExecutor(max(1, settings.inference_concurrency), thread_name_prefix="infer")
    io_pool = ThreadPoolExecutor(32, thread_name_prefix="aws")
    state: dict[str, TwopassService] = {}
    if service is not None:
        state["service"] = service

    def svc() -> TwopassService:
        if "service" not in state:
            state["service"] = TwopassService.from_settings(settings)
        return state["service"]

    app.state.service = svc

    async def run_in(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def replay(service: TwopassService, key_hash: str, body_hash: str) -> JSONResponse | None:
        """The answer already given for this Idempotency-Key, if there is one."""
        previous = await run_in(io_pool, service.store.idempotency, key_hash)
        if previous is None:
            return None
        if previous.body_hash != body_hash:
            raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with a different image")
        if previous.response is None:
            raise ApiError(409, "request_in_progress", "a request with this key is in progress", {"Retry-After": "1"})
        return JSONResponse(previous.response, headers={"Idempotent-Replayed": "true"})

    async def submit(request: Request, submission: _Submission) -> JSONResponse:
        service = svc()
        data = submission.data
        claim = _idempotency_claim(request, data, service.settings)
        if claim is not None and (earlier := await replay(service, claim.key_hash, claim.body_hash)) is not None:
            return earlier
        loop = asyncio.get_running_loop()
        decoded = asyncio.Event()

        def decode_and_classify() -> tuple[Prediction, float]:
            tensor = service.decode(data)
            loop.call_soon_threadsafe(decoded.set)  # a valid image: the enqueue may start now
            return service.classify(tensor)

        # One trip to the inference pool. The enqueue (table put + queue send) starts as soon as
        # the image has decoded and overlaps the fast model instead of following it; bad input
        # fails here, before any job exists.
        classify = loop.run_in_executor(inference_pool, decode_and_classify)
        signal: asyncio.Future[Any] = asyncio.ensure_future(decoded.wait())
        pending: set[asyncio.Future[Any]] = {classify, signal}
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if not decoded.is_set():
            signal.cancel()
            await classify  # raises why the image was refused
        job_id = service.new_job_id()
        if claim is not None:
            claim = dataclasses.replace(claim, job_id=job_id)
        request_id = request.headers.get("x-request-id") or _lambda_request_id(request) or uuid.uuid4().hex
        context = {"request_id": request_id}
        if submission.callback_url:
            context["callback_url"] = submission.callback_url
        try:
            enqueue_ms = await run_in(io_pool, _timed, service.enqueue, job_id, data, context, claim)
        except IdempotencyConflictError:
            classify.cancel()
            assert claim is not None
            # Another request with the same key won the race: answer as it did (or 409 meanwhile).
            earlier = await replay(service, claim.key_hash, claim.body_hash)
            if earlier is None:
                raise ApiError(409, "request_in_progress", "retry this Idempotency-Key", {"Retry-After": "1"}) from None
            return earlier
        except BaseException:
            classify.cancel()
            raise
        prediction, inference_ms = await classify
        fast = _model_result(service.fast_name, prediction, inference_ms)
        logger.info(
            "job queued; fast %s=%s (%.1f ms)",
            service.fast_name,
            prediction.label,
            inference_ms,
            extra=job_extra(job_id, request_id),
        )
        if metrics is not None:
            metrics.add(Metric.FAST_INFERENCE_MS, inference_ms)
            metrics.add(Metric.ENQUEUE_MS, enqueue_ms)
            metrics.add(Metric.JOBS_ACCEPTED, 1)
            metrics.flush()
        body = {
            "job_id": job_id,
            service.fast_name: prediction.label,
            "status": JobStatus.QUEUED.value,
            "fast": fast,
            "status_url": f"/job/{job_id}",
        }
        if claim is not None:
            await run_in(io_pool, service.store.remember_response, claim.key_hash, body)
        return JSONResponse(body)

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"health": "ok"}

    @app.get("/health/all", summary="Every backend's health")
    async def health_all() -> dict[str, Any]:
        service = svc()
        checks = await run_in(io_pool, service.health)
        fast = checks["fast_model"]
        slow_card = await run_in(io_pool, service.slow_card)
        body: dict[str, Any] = {}
        if fast["status"] == "ok":
            body[fast["model"]] = "ok"
        if slow_card:
            body[slow_card["name"]] = "ok" if checks["worker"]["status"] == "ok" else checks["worker"]["status"]
        degraded = any(c["status"] == "error" for c in checks.values())
        body.update({"status": "degraded" if degraded else "ok", "backends": checks})
        return body

    @app.get("/metadata", summary="Input and output contract, both model cards")
    async def metadata() -> dict[str, Any]:
        service = svc()
        fast_card = service.classifier.card
        size = fast_card.input_size
        return {
            "data_type": "str",
            "data_structure": "(1,1)",
            "data_sample": "base64 encoded image file",
            "prediction_type": "float32",
            "prediction_structure": "(1,1000)",
            "prediction_sample": "[0.00012, 0.00003, 0.00021, ...]",
            "input": {
                "json": {"image_data": "<base64 of a JPEG/PNG/WebP/GIF/BMP/TIFF file>"},
                "raw": "a body with Content-Type image/*",
                "max_bytes": service.settings.max_image_bytes,
                "max_pixels": service.settings.max_image_pixels,
                "fast_model_input": f"(N,3,{size},{size}) float32 RGB",
            },
            "output": {"fast": f"top-{service.settings.top_k} labels with probabilities", "labels": "ImageNet-1k"},
            "models": {"fast": fast_card.to_dict(), "slow": await run_in(io_pool, service.slow_card)},
        }

    @app.post(
        "/predict",
        summary="Classify now with the fast model and queue the slow model",
        response_model=PredictResponse,
        responses=_ERRORS,
        openapi_extra={"requestBody": _PREDICT_BODY},
    )
    async def predict(request: Request) -> JSONResponse:
        return await submit(request, await _read_submission(request, svc()))

    @app.get("/predict/test", summary="/predict on the bundled cat photo", response_model=PredictResponse)
    async def predict_test(request: Request) -> JSONResponse:
        return await submit(request, _Submission(svc().sample_image()))

    @app.get("/job/{job_id}", summary="The slow model's result", response_model=JobResponse, responses=_ERRORS)
    async def job(job_id: str) -> JSONResponse:
        if not is_job_id(job_id):
            raise ApiError(404, "not_found", f"no job {job_id!r}: job ids are 32 hexadecimal characters")
        record = await run_in(io_pool, svc().job, job_id)
        if record is None:
            raise ApiError(404, "not_found", f"no job {job_id!r} (unknown or expired)")
        return JSONResponse(job_body(record))

    return app


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    """Run ``fn(*args)``; its wall time in milliseconds."""
    started = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - started) * 1000


def _idempotency_claim(request: Request, data: bytes, settings: Settings) -> IdempotencyRecord | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters")
    ttl = min(settings.idempotency_ttl_hours * 3600, settings.job_ttl_seconds)
    return IdempotencyRecord(
        key_hash=hashlib.sha256(key.encode()).hexdigest(),
        job_id="",
        body_hash=hashlib.sha256(data).hexdigest(),
        expires_at=int(time.time() + ttl),
    )


def _require_api_key(app: FastAPI, keys: frozenset[str]) -> None:
    """Check ``x-api-key`` like API Gateway's usage plan does in front of the deployed function."""

    @app.middleware("http")
    async def check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path not in OPEN_PATHS:
            given = request.headers.get("x-api-key", "")
            if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
                return errors.error_response(403, "forbidden", "missing or invalid x-api-key header")
        return await call_next(request)


def _lambda_request_id(request: Request) -> str | None:
    context = request.scope.get("aws.context")
    return getattr(context, "aws_request_id", None)


@dataclasses.dataclass(frozen=True)
class _Submission:
    data: bytes
    callback_url: str | None = None


async def _read_submission(request: Request, service: TwopassService) -> _Submission:
    """The image (JSON ``image_data`` or a raw ``image/*`` body) and the optional callback URL."""
    submission = await _read_body(request, service)
    url = submission.callback_url or request.query_params.get("callback_url")
    if url is None:
        return submission
    settings = service.settings
    try:
        check_url(url, allow_private=settings.callback_allow_private, allow_http=settings.callback_allow_http)
    except CallbackURLError as exc:
        raise ApiError(400, "invalid_callback_url", str(exc)) from None
    return dataclasses.replace(submission, callback_url=url)


async def _read_body(request: Request, service: TwopassService) -> _Submission:
    limit = service.settings.max_image_bytes
    declared = request.headers.get("content-length", "")
    json_limit = limit * 4 // 3 + 4096  # base64 inflates by 4/3
    if declared.isdigit() and int(declared) > json_limit:
        raise ApiError(413, "payload_too_large", f"the body is {declared} bytes; images may be at most {limit} bytes")
    body = await request.body()
    if not body:
        raise ApiError(400, "empty_body", 'the body is empty: send {"image_data": "<base64>"} or an image/* body')
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or ctype.endswith("+json") or (not ctype and body[:1] == b"{"):
        return _image_from_json(body, limit)
    if ctype.startswith("image/") or ctype in ("application/octet-stream", ""):
        service.check_size(len(body))
        return _Submission(body)
    raise ApiError(415, "unsupported_media_type", f"content type {ctype!r}: send application/json or image/*")


def _image_from_json(body: bytes, limit: int) -> _Submission:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    try:
        request = PredictRequest.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ApiError(422, "validation_error", problems) from None
    text = request.image_data.strip()
    if "," in text[:100] and text.startswith("data:"):
        text = text.split(",", 1)[1]  # accept data: URLs as browsers produce them
    if len(text) > limit * 4 // 3 + 4:
        raise ApiError(413, "payload_too_large", f"image_data decodes to more than {limit} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", f"image_data is not valid base64: {exc}") from None
    if not data:
        raise ApiError(400, "empty_image", "image_data is empty")
    return _Submission(data, request.callback_url)

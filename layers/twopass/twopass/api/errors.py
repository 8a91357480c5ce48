"""Maps every failure the API can meet to a status code and an ``ErrorResponse`` body.

Bodies carry a stable code and a sentence for people; never a stack trace, and never a backend's
own error text (botocore's names internal endpoints) — the library's messages are written for this.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from twopass.exceptions import (
    ConditionFailedError,
    DependencyError,
    EnqueueError,
    IdempotencyKeyReusedError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidRequestError,
    JobNotFoundError,
    ModelLoadError,
    RequestInProgressError,
    TwopassError,
)
from twopass.jobs.base import ImageGoneError, JobFinalError, JobNotRetryableError
from twopass.payloads import ImageChangedError, ImagePendingError

logger = logging.getLogger(__name__)

#: Seconds a client should wait before retrying a 503 or a 409 for a request in progress.
RETRY_AFTER = "1"


class HTTPProblemError(TwopassError):
    """An error whose HTTP status and code are decided where it is raised (the HTTP layer's own)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


_MAPPING: list[tuple[type[TwopassError], int, str]] = [
    (ImageTooLargeError, 413, "payload_too_large"),
    (ImageChangedError, 409, "image_changed"),
    (InvalidImageError, 400, "invalid_image"),
    (JobNotFoundError, 404, "not_found"),
    (IdempotencyKeyReusedError, 422, "idempotency_key_reused"),
    (RequestInProgressError, 409, "request_in_progress"),
    (JobFinalError, 409, "job_final"),
    (JobNotRetryableError, 409, "job_not_retryable"),
    (ImageGoneError, 410, "image_gone"),
    (ImagePendingError, 409, "image_pending"),
    (ConditionFailedError, 409, "conflict"),
    (EnqueueError, 503, "enqueue_failed"),
    (DependencyError, 503, "dependency_unavailable"),
    (ModelLoadError, 503, "model_unavailable"),
]

#: 409s that asking again will not change: no Retry-After for them.
_FINAL_CONFLICTS = frozenset({"job_final", "job_not_retryable", "image_changed"})

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def problem_for(exc: TwopassError) -> tuple[int, str, str]:
    """``(status, code, detail)`` for a library error; 500 only for one nobody mapped (a bug)."""
    if isinstance(exc, HTTPProblemError):
        return exc.status, exc.code, exc.detail
    if isinstance(exc, InvalidRequestError):
        return 400, exc.code, str(exc)
    for kind, status, code in _MAPPING:
        if isinstance(exc, kind):
            return status, code, str(exc)
    return 500, "internal_error", "internal error"


def install(app: FastAPI) -> None:
    @app.exception_handler(TwopassError)
    async def _twopass_error(_: Request, exc: TwopassError) -> JSONResponse:
        status, code, detail = problem_for(exc)
        headers = exc.headers if isinstance(exc, HTTPProblemError) else None
        if status in (409, 503) and headers is None and code not in _FINAL_CONFLICTS:
            headers = {"Retry-After": RETRY_AFTER}
        if status == 500:
            logger.error("unexpected twopass error", exc_info=exc)
        elif status >= 500:
            logger.error("%s: %s", code, exc)
        return error_response(status, code, detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "validation_error", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace to the client; the log has it.
        logger.error("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal error")

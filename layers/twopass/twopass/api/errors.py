"""Maps every failure the API can meet to a status code and an ``ErrorResponse`` body."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from twopass.exceptions import (
    DependencyError,
    EnqueueError,
    ImageTooLargeError,
    InvalidImageError,
    JobNotFoundError,
    ModelLoadError,
    TwopassError,
)

logger = logging.getLogger(__name__)


class ApiError(TwopassError):
    """An error with its HTTP status and code decided where it is raised."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


_MAPPING: list[tuple[type[TwopassError], int, str]] = [
    (ImageTooLargeError, 413, "payload_too_large"),
    (InvalidImageError, 400, "invalid_image"),
    (JobNotFoundError, 404, "not_found"),
    (EnqueueError, 503, "enqueue_failed"),
    (DependencyError, 503, "dependency_unavailable"),
    (ModelLoadError, 503, "model_unavailable"),
]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(TwopassError)
    async def _twopass_error(_: Request, exc: TwopassError) -> JSONResponse:
        for kind, status, code in _MAPPING:
            if isinstance(exc, kind):
                if status >= 500:
                    logger.error("%s: %s", code, exc)
                return error_response(status, code, str(exc), {"Retry-After": "1"} if status == 503 else None)
        logger.exception("unexpected twopass error", exc_info=exc)
        return error_response(500, "internal_error", "internal error")

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
        logger.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal error")

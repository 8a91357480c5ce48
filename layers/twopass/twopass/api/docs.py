"""The API's own documentation: error responses for the schema, and Swagger UI served from the package.

``/docs`` loads its script and stylesheet from this app (the ``swagger-ui-bundle`` package), never from
a CDN: it works offline, and a deployment does not make its users' browsers fetch third-party code.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from twopass.api.errors import HTTPProblemError
from twopass.api.schemas import ErrorResponse, PredictRequest

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "The body is not a usable image (bad base64, not an image, truncated, unsupported mode) or bad JSON."),
        (403, "Missing or invalid x-api-key header."),
        (404, "No such job (or it has expired, or it belongs to another API key)."),
        (
            409,
            "A request with the same Idempotency-Key is still in progress (request_in_progress); the job has already "
            "ended (job_final) or cannot be retried in its state (job_not_retryable).",
        ),
        (410, "The job's image is no longer kept, so it cannot be retried (image_gone)."),
        (413, "The image is over the byte or pixel limit."),
        (415, "The body is neither JSON nor an image."),
        (422, "The JSON does not match the schema, or the Idempotency-Key was used with another image."),
        (
            429,
            "The backlog is over the service's limit and the request said on_overload: reject; retry after "
            "the Retry-After delay.",
        ),
        (503, "A backing service is unavailable or too slow; retry after the Retry-After delay."),
    )
}

PREDICT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}

#: The Swagger UI files ``/docs`` needs, served from the package under ``/docs/``.
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
OPEN_PATHS = frozenset({"/docs", "/openapi.json", *(f"/docs/{name}" for name in ASSETS)})

router = APIRouter(include_in_schema=False)


def _asset_dir() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # a slim deployment without the docs extra: /docs says so
        return None
    return Path(swagger_ui_path)


def public_prefix(request: Request) -> str:
    """The path the client sees in front of the app's routes: API Gateway's stage (``/dev``) or a
    custom domain's base path, which the function's own path leaves out; empty when served directly."""
    event: dict[str, Any] = request.scope.get("aws.event") or {}
    seen = str((event.get("requestContext") or {}).get("path") or "")
    routed = str(event.get("path") or "")
    if seen and routed and seen.endswith(routed):
        return seen.removesuffix(routed)
    return str(request.scope.get("root_path", ""))


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    if _asset_dir() is None:
        raise HTTPProblemError(404, "not_found", "interactive docs are not installed; /openapi.json has the schema")
    root = public_prefix(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="twopass — API docs",
        swagger_js_url=f"{root}/docs/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/favicon-32x32.png",
        swagger_ui_parameters={"persistAuthorization": True},
    )


@router.get("/docs/{name}")
async def swagger_asset(name: str) -> Response:
    folder = _asset_dir()
    if name not in ASSETS or folder is None:
        raise HTTPProblemError(404, "not_found", f"no docs asset {name!r}")
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {"Cache-Control": "public, max-age=86400"}
    return Response((folder / name).read_bytes(), media_type=media_type, headers=headers)

"""The API's own documentation: error responses for the schema, and Swagger UI served from the package.

``/docs`` loads its script and stylesheet from this app (the Swagger UI 5 build that the
``fastapi-offline`` package ships; 4.x cannot read the OpenAPI 3.1 FastAPI writes), never from a CDN:
it works offline, and a deployment does not make its users' browsers fetch third-party code.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from twopass.api.auth import TOKEN_MODES, USER_TOKEN_SCHEME
from twopass.api.errors import HTTPProblemError
from twopass.api.schemas import ErrorResponse, PredictRequest

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "The body is not a usable image (bad base64, not an image, truncated, unsupported mode) or bad JSON."),
        (401, "AuthMode cognito|jwt: missing, expired or invalid user token (Authorization: Bearer <JWT>)."),
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

#: The Swagger UI files ``/docs`` needs, served under ``/docs/``, by the package's name for each.
ASSET_FILES = {
    "swagger-ui-bundle.js": "swagger-ui-bundle.js",
    "swagger-ui.css": "swagger-ui.css",
    "favicon-32x32.png": "favicon.png",
}
ASSETS = tuple(ASSET_FILES)
OPEN_PATHS = frozenset({"/docs", "/openapi.json", *(f"/docs/{name}" for name in ASSETS)})

router = APIRouter(include_in_schema=False)


def _asset_dir() -> Path | None:
    try:
        import fastapi_offline
    except ImportError:  # a slim deployment without the docs package: /docs says so
        return None
    return Path(fastapi_offline.__file__).parent / "static"


def public_prefix(request: Request) -> str:
    """The path the client sees in front of the app's routes: API Gateway's stage (``/dev``) or a
    custom domain's base path, which the function's own path leaves out; empty when served directly."""
    event: dict[str, Any] = request.scope.get("aws.event") or {}
    seen = str((event.get("requestContext") or {}).get("path") or "")
    routed = str(event.get("path") or "")
    if seen and routed and seen.endswith(routed):
        return seen.removesuffix(routed)
    return str(request.scope.get("root_path", ""))


def declare_user_token(app: FastAPI, auth_mode: str) -> None:
    """In the token modes, the schema (and "Authorize" in ``/docs``) asks for the user's token beside the key.

    Added to the generated schema rather than declared on the dependency, so the API-key mode's
    schema names only the key it takes.
    """
    if auth_mode not in TOKEN_MODES:
        return
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["UserToken"] = USER_TOKEN_SCHEME
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if isinstance(operation, dict) and operation.get("security"):
                        operation["security"] = [{**need, "UserToken": []} for need in operation["security"]]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    if _asset_dir() is None:
        raise HTTPProblemError(404, "not_found", "interactive docs are not installed; /openapi.json has the schema")
    root = public_prefix(request)
    from fastapi.openapi.docs import get_swagger_ui_html  # only /docs needs it

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
    return Response((folder / ASSET_FILES[name]).read_bytes(), media_type=media_type, headers=headers)

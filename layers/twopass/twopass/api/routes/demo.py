"""``/demo``: a page that shows the sync-async pattern to a person, served by the API itself.

Pick or drop a photo: the fast label and its confidence appear at once, then the slow label replaces
it with the job's timeline. The page uses the JavaScript client (``clients/js``, the same file served
here as ``/demo/twopass.js``), with an API key or a signed-in user's token. Everything it loads comes
from this app (no CDN). Off unless ``TWOPASS_DEMO`` is true (template parameter ``DemoPage``; on in
the local stack): a 404 then, as for any unknown path.
"""

from __future__ import annotations

from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import Response

from twopass.api.auth import TOKEN_MODES
from twopass.api.context import Context
from twopass.api.errors import HTTPProblemError

#: The page's files by the name it asks for them, with their media types.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
    "twopass.js": "text/javascript; charset=utf-8",
}
#: The page may load only its own files and call only this API (and the Cognito endpoint it is told).
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self' {cognito}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

# Out of the OpenAPI schema and without response models: the page's own files (HTML, script, style)
# and the little config it reads, none of them part of the API's contract.
router = APIRouter(include_in_schema=False)


def _file(name: str) -> bytes:
    return (resources.files("twopass.api") / "static" / name).read_bytes()


def cognito_endpoint(issuer: str, jwks_url: str) -> str:
    """Where a browser signs a user in (InitiateAuth): the Cognito endpoint of the pool's region, or
    the emulator serving the keys locally (its issuer names the real region's endpoint)."""
    source = jwks_url or issuer
    parts = urlsplit(source)
    return f"{parts.scheme}://{parts.netloc}/" if parts.netloc else ""


def _config(context: Context) -> dict[str, Any]:
    settings = context.settings
    config: dict[str, Any] = {"auth_mode": settings.auth_mode, "api_key": bool(settings.api_key_set)}
    if settings.auth_mode == "cognito":
        clients = [a.strip() for a in settings.jwt_audience.split(",") if a.strip()]
        config["cognito"] = {
            "endpoint": cognito_endpoint(settings.jwt_issuer, settings.jwks_url),
            "client_id": clients[0] if clients else "",
        }
    return config


def _enabled(context: Context) -> None:
    if not context.settings.demo:
        raise HTTPProblemError(404, "not_found", "no such path (the demo page is off: TWOPASS_DEMO)")


def _headers(context: Context) -> dict[str, str]:
    config = _config(context)
    cognito = config.get("cognito", {}).get("endpoint", "") if context.settings.auth_mode in TOKEN_MODES else ""
    return {"Content-Security-Policy": CSP.format(cognito=cognito).replace("  ", " "), "Cache-Control": "no-cache"}


@router.get("/demo")
async def demo_page(context: Context) -> Response:
    _enabled(context)
    return Response(_file("index.html"), media_type=FILES["index.html"], headers=_headers(context))


@router.get("/demo/config.json")
async def demo_config(context: Context) -> dict[str, Any]:
    """What the page needs to sign a user in: the auth mode and, for Cognito, the endpoint and app client."""
    _enabled(context)
    return _config(context)


@router.get("/demo/{name}")
async def demo_file(name: str, context: Context) -> Response:
    _enabled(context)
    if name not in FILES or name == "index.html":
        raise HTTPProblemError(404, "not_found", f"no demo file {name!r}")
    return Response(_file(name), media_type=FILES[name], headers=_headers(context))

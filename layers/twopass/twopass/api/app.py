"""The FastAPI application: the seed's endpoints, routed by resource over :class:`TwopassService`."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from twopass import __version__
from twopass.api import errors
from twopass.api.context import ApiContext
from twopass.api.cors import CorsMiddleware, OriginPolicy
from twopass.api.docs import declare_user_token
from twopass.api.docs import router as docs_router
from twopass.api.oip import routes as oip
from twopass.api.routes import batches, demo, jobs, meta, predict, uploads
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.observability import logs


def create_app(
    service: TwopassService | None = None, settings: Settings | None = None, *, emit_metrics: bool = True
) -> FastAPI:
    """Build the app. Without ``service`` one is built from the environment on first use."""
    settings = settings or (service.settings if service else Settings.from_env())
    logs.configure(settings.log_level, service="twopass-api", fmt=settings.log_format)
    app = FastAPI(
        title="twopass",
        version=__version__,
        description="A fast model answers at once; a slow, more accurate model follows through a queue.",
        docs_url=None,  # served from the package by docs_router, not from a CDN
        redoc_url=None,
        redirect_slashes=False,
        # Responses are documented by their models' full schemas (their serializers only order keys).
        separate_input_output_schemas=False,
    )
    app.state.twopass = ApiContext(settings, service, emit_metrics=emit_metrics)
    errors.install(app)
    for router in (
        meta.open_router,
        meta.router,
        predict.router,
        uploads.router,
        batches.router,
        jobs.router,
        oip.open_router,
        oip.router,
        docs_router,
        demo.router,
    ):
        app.include_router(router)
    declare_user_token(app, settings.auth_mode)
    app.add_middleware(StripTrailingSlash)
    # Outside the routes (added last, it runs first): preflights need no key, and errors carry the headers.
    app.add_middleware(CorsMiddleware, policy=OriginPolicy.parse(settings.cors_allow_origins))
    return app


class StripTrailingSlash:
    """``/predict/test/`` answers as ``/predict/test`` does, instead of an empty redirect."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
        await self.app(scope, receive, send)

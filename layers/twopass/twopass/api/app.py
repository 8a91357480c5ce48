"""The FastAPI application: the seed's endpoints, routed by resource over :class:`TwopassService`.

A Lambda cold start pays for every module the first request imports. With ``defer_routes`` the app
starts with the fast path's routes alone (``POST /predict``, ``GET /predict/test``); the other routes
(their modules, response models and OpenAPI pieces) load on the first request for any other path,
and then the app is the one ``create_app`` builds without it, routes in the same order.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from twopass import __version__
from twopass.api import errors
from twopass.api.context import ApiContext, on_lambda
from twopass.api.cors import CorsMiddleware, OriginPolicy
from twopass.api.routes import predict
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.observability import logs

#: Paths the routes of :mod:`twopass.api.routes.predict` answer: with ``defer_routes``, the rest wait.
FAST_PATHS = frozenset({"/predict", "/predict/test"})


def create_app(
    service: TwopassService | None = None,
    settings: Settings | None = None,
    *,
    emit_metrics: bool = True,
    defer_routes: bool = False,
) -> FastAPI:
    """Build the app. Without ``service`` one is built from the environment on first use.

    ``defer_routes``: only the fast path's routes now, the others on the first request for another
    path (the Lambda entry point's choice: its first request is most often a prediction).
    """
    settings = settings or (service.settings if service else Settings.from_env())
    # A long-running server writes request logs from a background thread; Lambda, within the request.
    background = not on_lambda() and settings.metrics_flush_seconds > 0
    logs.configure(settings.log_level, service="twopass-api", fmt=settings.log_format, background=background)
    app = FastAPI(
        title="twopass",
        version=__version__,
        description="A fast model answers at once; a slow, more accurate model follows through a queue.",
        docs_url=None,  # served from the package by docs_router, not from a CDN
        redoc_url=None,
        redirect_slashes=False,
        # Responses are documented by their models' full schemas (their serializers only order keys).
        separate_input_output_schemas=False,
        lifespan=_lifespan,
    )
    app.state.twopass = ApiContext(settings, service, emit_metrics=emit_metrics)
    errors.install(app)
    routes = _Routes(app, settings.auth_mode)
    if defer_routes:
        app.include_router(predict.router)
        app.add_middleware(_LoadRoutes, routes=routes)
    else:
        routes.load()
    app.add_middleware(StripTrailingSlash)
    # Outside the routes (added last, it runs first): preflights need no key, and errors carry the headers.
    app.add_middleware(CorsMiddleware, policy=OriginPolicy.parse(settings.cors_allow_origins))
    return app


class _Routes:
    """Every router of the app, included in one order whenever they load."""

    def __init__(self, app: FastAPI, auth_mode: str) -> None:
        self.app, self.auth_mode = app, auth_mode
        self.loaded = False
        self._lock = threading.Lock()
        #: FastAPI's own routes (``/openapi.json``), which come before every router's.
        self._own = list(app.router.routes)

    def load(self) -> None:
        with self._lock:
            if self.loaded:
                return
            from twopass.api.docs import declare_user_token
            from twopass.api.docs import router as docs_router
            from twopass.api.oip import routes as oip
            from twopass.api.routes import batches, demo, jobs, meta, uploads

            routers: tuple[APIRouter, ...] = (
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
            )
            # The fast path's routes, if already there, go back to their place among the others.
            self.app.router.routes[:] = self._own
            for router in routers:
                self.app.include_router(router)
            declare_user_token(self.app, self.auth_mode)
            self.app.openapi_schema = None
            self.loaded = True


class _LoadRoutes:
    """Loads the deferred routes before the first request for a path outside :data:`FAST_PATHS`."""

    def __init__(self, app: ASGIApp, routes: _Routes) -> None:
        self.app, self.routes = app, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.routes.loaded and scope["type"] in ("http", "websocket") and scope["path"] not in FAST_PATHS:
            self.routes.load()
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.twopass.flush_telemetry()  # a server stopping: the metrics of its last seconds


class StripTrailingSlash:
    """``/predict/test/`` answers as ``/predict/test`` does, instead of an empty redirect."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
        await self.app(scope, receive, send)

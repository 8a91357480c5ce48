"""What every route shares, reached through FastAPI dependencies: settings, the service, the pools.

Inference is CPU-bound and blocking: a bounded pool keeps the event loop free and caps parallel
model calls at what the cores can run. AWS calls block on the network: they get a pool of their own
so a slow table never queues behind the model, nor the model behind a slow table.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import Depends, Request

from twopass.api.services.service import TwopassService
from twopass.api.usecases.control import BacklogGauge
from twopass.config import Settings
from twopass.observability.metrics import MetricsSink


class ApiContext:
    """The app's shared state; the service is built from ``settings`` on first use unless given."""

    def __init__(self, settings: Settings, service: TwopassService | None = None, *, emit_metrics: bool) -> None:
        self.settings = settings
        self._service = service
        self._lock = threading.Lock()
        self.metrics = MetricsSink(service="twopass-api") if emit_metrics else None
        self.inference_pool = ThreadPoolExecutor(max(1, settings.inference_concurrency), thread_name_prefix="infer")
        self.io_pool = ThreadPoolExecutor(32, thread_name_prefix="aws")
        #: The queues' depth for the ``max_backlog`` check, read at most every ``backlog_cache_seconds``.
        self.backlog = BacklogGauge(lambda: self.service.reports.backlog(), settings.backlog_cache_seconds)

    @property
    def service(self) -> TwopassService:
        if self._service is None:
            with self._lock:
                if self._service is None:
                    self._service = TwopassService.from_settings(self.settings)
        return self._service

    async def io[T](self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking AWS call on the I/O pool."""
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn, *args)

    def infer[T](self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Start CPU-bound work on the inference pool; await the future for its result."""
        return asyncio.get_running_loop().run_in_executor(self.inference_pool, fn, *args)


# Async although they never await: FastAPI runs a plain ``def`` dependency on its thread pool, a
# thread hop per dependency per request for what is an attribute read.
async def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.twopass
    return context


def get_service(context: Annotated[ApiContext, Depends(get_context)]) -> TwopassService:
    return context.service


Context = Annotated[ApiContext, Depends(get_context)]
Service = Annotated[TwopassService, Depends(get_service)]


def request_id(request: Request) -> str:
    """The caller's ``x-request-id``, else the Lambda invocation's id, else a fresh one (logs and jobs carry it)."""
    lambda_context = request.scope.get("aws.context")
    lambda_id: Any = getattr(lambda_context, "aws_request_id", None)
    return request.headers.get("x-request-id") or lambda_id or uuid.uuid4().hex

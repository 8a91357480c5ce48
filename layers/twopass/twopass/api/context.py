"""What every route shares, reached through FastAPI dependencies: settings, the service, the pools.

Inference is CPU-bound and blocking: a bounded pool keeps the event loop free and caps parallel
model calls at what the cores can run. AWS calls block on the network: they get a pool of their own
so a slow table never queues behind the model, nor the model behind a slow table. Both pools are
sized by the settings' rules (``Settings.inference_threads``, ``Settings.io_pool_threads``): a pool
larger than the work wakes its idle threads in turn, a context switch and a cold cache a trip.

Telemetry: on Lambda every request's metrics flush before it answers (the sandbox may be frozen
after); in a long-running server they flush every ``metrics_flush_seconds`` from a background thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
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
        #: Whether telemetry is written within each request (Lambda) rather than by background threads.
        self.per_request_telemetry = on_lambda() or settings.metrics_flush_seconds <= 0
        flush_every = 0.0 if self.per_request_telemetry else settings.metrics_flush_seconds
        self.metrics = MetricsSink(service="twopass-api", flush_every=flush_every) if emit_metrics else None
        self.inference_pool = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="infer")
        self.io_pool = ThreadPoolExecutor(settings.io_pool_threads, thread_name_prefix="aws")
        #: The queues' depth for the ``max_backlog`` check, read at most every ``backlog_cache_seconds``.
        self.backlog = BacklogGauge(lambda: self.service.reports.backlog(), settings.backlog_cache_seconds)

    @cached_property
    def inline_backends(self) -> bool:
        """Whether the job store and queues never block (they say ``blocking = False``: the in-memory
        ones) and no bucket is in play: a request's backend calls then run on its inference thread,
        one trip off the event loop in all, instead of trips to the I/O pool."""
        service = self.service
        backends = [service.store, service.publisher, service.high_priority_publisher]
        return not self.settings.payload_bucket and all(
            getattr(b, "blocking", True) is False for b in backends if b is not None
        )

    @property
    def service(self) -> TwopassService:
        if self._service is None:
            with self._lock:
                if self._service is None:
                    self._service = TwopassService.from_settings(self.settings)
        return self._service

    def flush_telemetry(self) -> None:
        """Print the metrics still pending: once a Lambda invocation has answered, and at a server's shutdown."""
        if self.metrics is not None:
            self.metrics.drain()

    async def io[T](self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking AWS call on the I/O pool."""
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn, *args)

    def infer[T](self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Start CPU-bound work on the inference pool; await the future for its result."""
        return asyncio.get_running_loop().run_in_executor(self.inference_pool, fn, *args)


def on_lambda() -> bool:
    """Whether this process is a Lambda sandbox, which may be frozen as soon as a request has answered."""
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


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

"""``uvicorn --factory bench.http_app:create_app``: the real twopass app over in-memory backends.

The store and publisher are :class:`MemoryJobStore` and :class:`MemoryQueue` (which implements
``JobPublisher``), so the HTTP measurement shows the framework and the fast model, not an emulator.
Every other setting comes from the environment (``TWOPASS_*``), as in production.
"""

from __future__ import annotations

from fastapi import FastAPI

from twopass.api.app import create_app as create_twopass_app
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.jobs.memory import MemoryJobStore
from twopass.queue.memory import MemoryQueue


def create_app() -> FastAPI:
    settings = Settings.from_env()
    service = TwopassService(settings, MemoryJobStore(), MemoryQueue())
    _ = service.classifier  # load before the first request, as the Lambda init does
    return create_twopass_app(service)

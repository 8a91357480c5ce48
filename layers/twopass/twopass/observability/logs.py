"""Logging set-up shared by the API and the worker.

On AWS (Lambda, ECS) every ``twopass.*`` record is one JSON object (powertools' formatter) with the
job id and request id as top-level keys, so one query follows a job from API to worker. Locally the
same records print as readable lines with those ids appended.

A long-running server (the API under uvicorn) may hand records to a background thread
(``background=True``): the request's thread only puts the record on a queue, and formatting and the
write happen off the event loop. Lambda writes in place: its sandbox may be frozen once it has
answered, with records still queued.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import logging.handlers
import os
import queue
import sys
from typing import Any

#: ``extra`` keys that identify a job across processes; both formats print them.
CORRELATION_KEYS = ("job_id", "request_id", "worker_id")


def job_extra(job_id: str, request_id: str | None = None, **more: Any) -> dict[str, Any]:
    """``extra=`` for a log record about one job: the correlation ids every process logs."""
    extra: dict[str, Any] = {"job_id": job_id, "correlation_id": job_id}
    if request_id:
        extra["request_id"] = request_id
    extra.update(more)
    return extra


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{k}={getattr(record, k)}" for k in CORRELATION_KEYS if getattr(record, k, None)]
        return f"{line} [{' '.join(ids)}]" if ids else line


def default_format() -> str:
    """``json`` where a log service reads the output (Lambda, ECS), ``text`` on a terminal."""
    on_aws = os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    return "json" if on_aws else "text"


def configure(
    level: str = "INFO", *, service: str = "twopass", fmt: str | None = None, background: bool = False
) -> None:
    """Send ``twopass.*`` records to stderr (text) or stdout (JSON), once per process.

    ``background``: through a queue to a listener thread that formats and writes them (flushed at exit).
    """
    log = logging.getLogger("twopass")
    log.setLevel(level.upper())
    if getattr(log, "_twopass_configured", False):
        return
    fmt = fmt.lower() if fmt in ("json", "text", "JSON", "TEXT") else default_format()
    handler: logging.Handler
    if fmt == "json":
        from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(LambdaPowertoolsFormatter(service=service))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_TextFormatter())
    if background:
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        listener = _Listener(records, handler, respect_handler_level=True)
        listener.start()
        atexit.register(listener.stop)  # what is still queued is written before the process exits
        handler = _RecordQueueHandler(records)
    log.addHandler(handler)
    # Our handler is the only one: Lambda's root handler would print every record a second time.
    log.propagate = False
    log._twopass_configured = True  # type: ignore[attr-defined]


class _RecordQueueHandler(logging.handlers.QueueHandler):
    """Queues the record itself, its message merged: the listener's formatter then sees what it would
    have seen in place (``exc_info`` for the JSON formatter's ``exception`` key, the extra keys)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None  # the arguments may change after this call
        return record


class _Listener(logging.handlers.QueueListener):
    """A listener whose thread outlives a record it cannot write (a closed stream): that record is lost,
    the ones after it are not."""

    def handle(self, record: logging.LogRecord) -> None:
        # handleError itself failed (its stderr is closed too): there is nowhere left to say so.
        with contextlib.suppress(Exception):
            super().handle(record)

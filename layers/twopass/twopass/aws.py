"""The one place boto3 clients are made: one shared session, endpoint override, sane timeouts."""

from __future__ import annotations

import os
import threading
from functools import cache
from typing import Any

_lock = threading.Lock()


def endpoint_url() -> str | None:
    """``AWS_ENDPOINT_URL`` (the local emulator) or ``None`` for the real AWS endpoints."""
    return os.environ.get("AWS_ENDPOINT_URL") or None


@cache
def _session(region: str) -> Any:
    import boto3  # imported here: the SDK client package must not need boto3

    # One session for every client: each new session reloads botocore's data (~0.1 s of cold start).
    return boto3.session.Session(region_name=region)


@cache
def _client(service: str, endpoint: str | None, region: str) -> Any:
    from botocore.config import Config

    config = Config(
        # Short connect timeout: a dead dependency should become a 503 quickly, not a hung request.
        connect_timeout=2,
        read_timeout=30,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=32,
    )
    with _lock:  # creating clients from one session is not thread-safe; using them is
        return _session(region).client(service, endpoint_url=endpoint, config=config)


def client(service: str) -> Any:
    """A cached boto3 client for ``service`` honouring ``AWS_ENDPOINT_URL`` and ``AWS_REGION``."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return _client(service, endpoint_url(), region)


def reset_clients() -> None:
    """Forget cached clients and sessions (tests that switch endpoints or credentials call this)."""
    _client.cache_clear()
    _session.cache_clear()

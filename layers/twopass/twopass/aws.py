"""The one place boto3 clients are made: one shared session, endpoint override, sane timeouts."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from twopass.exceptions import ConditionFailedError, DependencyError, DependencyTimeoutError, MissingObjectError

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


#: Error codes that mean "the thing is not there", not "the service is down".
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn botocore's errors raised inside the block into twopass's hierarchy.

    * a refused condition (or a transaction cancelled by one) → :class:`ConditionFailedError`;
    * a missing object → :class:`MissingObjectError`;
    * a timeout → :class:`DependencyTimeoutError` (the call may or may not have taken effect);
    * anything else → :class:`DependencyError`.

    Messages name the operation and the error code only: botocore's own text carries endpoint
    URLs, which must not reach API clients.
    """
    from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "unknown"))
        if code == "ConditionalCheckFailedException":
            raise ConditionFailedError(f"{what}: condition not met") from exc
        if code == "TransactionCanceledException":
            reasons = tuple(str(r.get("Code", "None")) for r in exc.response.get("CancellationReasons", []))
            if "ConditionalCheckFailed" in reasons:
                raise ConditionFailedError(f"{what}: condition not met", reasons) from exc
        if code in _MISSING_CODES:
            raise MissingObjectError(f"{what}: not found") from exc
        raise DependencyError(f"{what} failed ({code})") from exc
    except (ReadTimeoutError, ConnectTimeoutError) as exc:
        raise DependencyTimeoutError(f"{what} timed out") from exc
    except BotoCoreError as exc:
        raise DependencyError(f"{what} failed ({type(exc).__name__})") from exc

"""The one place boto3 clients are made: one shared session, endpoint override, sane timeouts."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

from twopass.exceptions import ConditionFailedError, DependencyError, DependencyTimeoutError, MissingObjectError

_lock = threading.Lock()
#: botocore event handlers given to every client made here (see :func:`on_event`), and those clients.
_handlers: list[tuple[str, Callable[..., Any]]] = []
_made: list[Any] = []


def endpoint_url() -> str | None:
    """``AWS_ENDPOINT_URL`` (the local emulator) or ``None`` for the real AWS endpoints."""
    return os.environ.get("AWS_ENDPOINT_URL") or None


@cache
def _session(region: str) -> Any:
    import boto3  # imported here: the SDK client package must not need boto3

    # One session for every client: each new session reloads botocore's data (~0.1 s of cold start).
    return boto3.session.Session(region_name=region)


@dataclass(frozen=True)
class CallBudget:
    """How long one AWS call may take: per-try timeouts and how many tries (botocore's standard retries)."""

    connect_timeout: float = 2.0
    #: Above SQS's 20 s long poll, so a worker's receive is never cut short.
    read_timeout: float = 30.0
    max_attempts: int = 3


#: Background work (the worker, tools): patient, since nobody is waiting on an HTTP answer.
DEFAULT_BUDGET = CallBudget()


def request_budget(call_timeout: float) -> CallBudget:
    """The request path's budget: two short tries, so a stalled backend becomes a 503 in seconds."""
    return CallBudget(connect_timeout=min(1.0, call_timeout), read_timeout=call_timeout, max_attempts=2)


@cache
def _client(service: str, endpoint: str | None, region: str, budget: CallBudget) -> Any:
    from botocore.config import Config

    config = Config(
        connect_timeout=budget.connect_timeout,
        read_timeout=budget.read_timeout,
        retries={"max_attempts": budget.max_attempts, "mode": "standard"},
        max_pool_connections=32,
    )
    with _lock:  # creating clients from one session is not thread-safe; using them is
        made = _session(region).client(service, endpoint_url=endpoint, config=config)
        for event, handler in _handlers:
            made.meta.events.register(event, handler)
        _made.append(made)
        return made


def client(service: str, budget: CallBudget = DEFAULT_BUDGET) -> Any:
    """A cached boto3 client for ``service`` honouring ``AWS_ENDPOINT_URL`` and ``AWS_REGION``."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return _client(service, endpoint_url(), region, budget)


def reset_clients() -> None:
    """Forget cached clients and sessions (tests that switch endpoints or credentials call this)."""
    with _lock:
        _client.cache_clear()
        _session.cache_clear()
        _made.clear()


def on_event(event: str, handler: Callable[..., Any]) -> Callable[[], None]:
    """Register ``handler`` for botocore's ``event`` on every client made here, already or later.

    Each client holds a copy of its session's event handlers, taken when it is made, so registering
    on the session alone would miss the clients already cached. Returns the unregistering call.
    """
    with _lock:
        _handlers.append((event, handler))
        for made in _made:
            made.meta.events.register(event, handler)

    def off() -> None:
        with _lock:
            if (event, handler) in _handlers:
                _handlers.remove((event, handler))
            for made in _made:
                made.meta.events.unregister(event, handler)

    return off


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

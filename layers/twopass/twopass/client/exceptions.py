"""Errors the client raises. All derive from :class:`twopass.exceptions.TwopassError`.

::

    TwopassError
    └── ClientError
        ├── InvalidInputError            (also ValueError)
        ├── EventLoopError               (also RuntimeError)
        ├── TransportError               (also ConnectionError)
        ├── ResponseError
        │   └── NotTwopassError          (no twopass API at the URL: another server, or a wrong path)
        ├── JobFailedError               (failed, cancelled or expired)
        ├── WaitTimeoutError             (also TimeoutError)
        └── ApiError
            ├── BadRequestError
            ├── AuthenticationError
            ├── NotFoundError
            ├── RateLimitedError
            └── ServerError
                └── ServiceUnavailableError
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twopass.exceptions import TwopassError

if TYPE_CHECKING:
    from twopass.client._models import JobResult

__all__ = [
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "ClientError",
    "EventLoopError",
    "InvalidInputError",
    "JobFailedError",
    "NotFoundError",
    "NotTwopassError",
    "RateLimitedError",
    "ResponseError",
    "ServerError",
    "ServiceUnavailableError",
    "TransportError",
    "TwopassError",
    "WaitTimeoutError",
]


class ClientError(TwopassError):
    """Root of every error the client raises."""


class InvalidInputError(ClientError, ValueError):
    """The image argument cannot be sent (unsupported type, text-mode file, empty)."""


class EventLoopError(ClientError, RuntimeError):
    """The blocking Client was called from a thread that runs an asyncio event loop."""


class TransportError(ClientError, ConnectionError):
    """The server could not be reached (or the connection broke) on every attempt.

    ``hint`` says what to do about it, and ends the message.
    """

    def __init__(self, message: str, *, url: str, attempts: int, hint: str | None = None) -> None:
        super().__init__(f"{message}; {hint}" if hint else message)
        self.url, self.attempts, self.hint = url, attempts, hint


class ResponseError(ClientError):
    """The server answered with a body that does not follow the twopass contract."""


class NotTwopassError(ResponseError):
    """What answered at the base URL is not a twopass API: another server (an HTML page, another JSON
    API, a redirect), or a twopass API under a different path (a route that every twopass API has
    answered 404). The message says what came back and to check the URL.
    """

    def __init__(self, message: str, *, url: str, status: int, got: str) -> None:
        super().__init__(message)
        #: ``url`` is the request's full URL; ``got`` the short description of the answer.
        self.url, self.status, self.got = url, status, got


class ApiError(ClientError):
    """The server answered with an error status; carries its ``error`` code and ``detail``.

    ``hint``, when the client knows what to do about the error (send a key, check the URL), ends
    the message.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        retry_after: float | None = None,
        request_id: str | None = None,
        attempts: int = 1,
        hint: str | None = None,
    ) -> None:
        message = f"{status} {code}: {detail}"
        super().__init__(f"{message}; {hint}" if hint else message)
        self.status, self.code, self.detail, self.hint = status, code, detail, hint
        self.retry_after, self.request_id, self.attempts = retry_after, request_id, attempts


class BadRequestError(ApiError):
    """The server refused the request as malformed (400, 413, 415, 422 and other 4xx)."""


class AuthenticationError(ApiError):
    """The API key is missing or not accepted (401, 403)."""


class NotFoundError(ApiError):
    """No such job, or it has expired (404)."""


class RateLimitedError(ApiError):
    """Too many requests (429), still after the retries; ``retry_after`` says when to come back."""


class ServerError(ApiError):
    """The server failed (5xx), still after the retries."""


class ServiceUnavailableError(ServerError):
    """A backing service or gateway is unavailable (502, 503, 504), still after the retries."""


class JobFailedError(ClientError):
    """The job ended without a result: ``failed``, ``cancelled`` or ``expired`` (``result.status`` says
    which); ``result`` holds its record and error."""

    def __init__(self, result: JobResult) -> None:
        if result.status == "cancelled":
            message = f"job {result.job_id} was cancelled"
        else:
            message = f"job {result.job_id} {result.status}: {result.error or 'no reason given'}"
        super().__init__(message)
        self.result = result
        self.job_id = result.job_id


class WaitTimeoutError(ClientError, TimeoutError):
    """The job was not finished when ``wait`` ran out of time; ``last`` is the last status seen."""

    def __init__(self, job_id: str, timeout: float, last: JobResult | None) -> None:
        status = last.status if last is not None else "unknown"
        super().__init__(f"job {job_id} still {status} after {timeout:g} s")
        self.job_id, self.timeout, self.last = job_id, timeout, last

"""What the blocking and the asyncio clients share: configuration, request building, image input,
the retry policy, error mapping and the polling schedule. No I/O happens here, so both clients
run exactly the same decisions and differ only in how they send and sleep.
"""

from __future__ import annotations

import email.utils
import io
import math
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import quote

import httpx

from twopass import __version__
from twopass.client._models import JobHandle, JobResult, Prediction
from twopass.client.exceptions import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    InvalidInputError,
    JobFailedError,
    NotFoundError,
    RateLimitedError,
    ResponseError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
)

if TYPE_CHECKING:
    # typing.TypeIs is 3.13+; under TYPE_CHECKING the client still needs no typing_extensions.
    from PIL.Image import Image as PILImage
    from typing_extensions import TypeIs

#: Where ``make run`` / ``twopass local`` serve; used when neither an argument nor TWOPASS_URL says.
DEFAULT_URL: Final = "http://127.0.0.1:3000"
ENV_URL: Final = "TWOPASS_URL"
ENV_API_KEY: Final = "TWOPASS_API_KEY"
API_KEY_HEADER: Final = "x-api-key"

type ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | PILImage
"""A path, the encoded file's bytes, a binary file object, or a PIL image."""

type JobRef = str | JobHandle | Prediction | JobResult
"""Anything that names a job: its id, its handle, the prediction that queued it, or a result."""

# Status codes worth another try: the server (or a gateway in front of it) says "not now".
# 501 and 505 are answers that will not change on retry.
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
# Errors raised before the request could have reached the server: safe to repeat any request.
_NOT_SENT_ERRORS: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Errors after the request may have been handled. A GET is safe to repeat; a POST /predict is not
# (it would queue a second job), so those are retried for idempotent methods only.
_MAYBE_SENT_ERRORS: Final = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.CloseError,
)
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

_SIGNATURES: Final = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter; a server's Retry-After wins when it sends one.

    Attempt ``n`` (0-based) sleeps ``uniform(0, min(max_backoff, backoff * 2**n))``: full jitter
    spreads clients that failed together so they do not come back together.
    """

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    #: A Retry-After longer than this is not slept through: the error goes to the caller, who knows
    #: better whether an hour-long wait is acceptable.
    max_retry_after: float = 60.0

    def backoff_delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_backoff, self.backoff * 2.0**attempt))


def resolve_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(ENV_URL) or DEFAULT_URL
    if "://" not in url:
        url = f"http://{url}"
    return url.rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key if api_key is not None else (os.environ.get(ENV_API_KEY) or None)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def job_id_of(job: JobRef) -> str:
    if isinstance(job, str):
        return job
    if isinstance(job, JobHandle | Prediction | JobResult):
        return job.job_id
    raise InvalidInputError(f"expected a job id, JobHandle, Prediction or JobResult, got {type(job).__name__}")


def read_image(image: ImageInput) -> bytes:
    """The encoded image file's bytes, whichever form the caller had it in."""
    data: bytes
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    elif isinstance(image, str | os.PathLike):
        data = Path(image).expanduser().read_bytes()
    elif _is_pil_image(image):
        data = _encode_pil(image)
    elif callable(getattr(image, "read", None)):
        read = image.read()
        if isinstance(read, str):
            raise InvalidInputError("the file object is in text mode: open the image with 'rb'")
        if not isinstance(read, bytes | bytearray | memoryview):
            raise InvalidInputError(f"the file object's read() returned {type(read).__name__}, not bytes")
        data = bytes(read)
    else:
        raise InvalidInputError(
            f"cannot send a {type(image).__name__} as an image: pass a path, bytes, a binary file object or a PIL image"
        )
    if not data:
        raise InvalidInputError("the image is empty (0 bytes)")
    return data


def content_type(data: bytes) -> str:
    """The image's MIME type from its first bytes; the server decodes by content, not by this."""
    for magic, mime in _SIGNATURES:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _is_pil_image(obj: object) -> TypeIs[PILImage]:
    # A PIL image can only exist if PIL.Image is already imported, so looking in sys.modules
    # recognises one without ever importing Pillow ourselves.
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(obj, pil.Image)


def _encode_pil(image: PILImage) -> bytes:
    # Keep the format the image was opened in, so a 3 MB JPEG stays about 3 MB and does not become
    # a 20 MB PNG the server's byte limit refuses; images made in memory go as lossless PNG.
    fmt = (image.format or "PNG").upper()
    buf = io.BytesIO()
    if fmt in ("JPEG", "MPO"):
        rgb = image if image.mode in ("RGB", "L", "CMYK") else image.convert("RGB")
        rgb.save(buf, format="JPEG", quality=95)
    elif fmt == "WEBP":
        image.save(buf, format="WEBP", quality=95)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def error_from_response(response: httpx.Response, *, request_id: str | None, attempts: int) -> ApiError:
    """The ApiError subclass for an error response, with the server's code and sentence."""
    status = response.status_code
    code, detail = f"http_{status}", response.reason_phrase or "error"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        # twopass says {"error", "detail"}; API Gateway's own refusals say {"message"}.
        code = str(body.get("error") or code)
        detail = str(body.get("detail") or body.get("message") or detail)
    elif response.text.strip():
        detail = response.text.strip()[:300]
    cls: type[ApiError]
    if status in (401, 403):
        cls = AuthenticationError
    elif status == 404:
        cls = NotFoundError
    elif status == 429:
        cls = RateLimitedError
    elif status in (502, 503, 504):
        cls = ServiceUnavailableError
    elif status >= 500:
        cls = ServerError
    elif status >= 400:
        cls = BadRequestError
    else:
        cls = ApiError
    return cls(
        status,
        code,
        detail,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        request_id=request_id,
        attempts=attempts,
    )


def response_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ResponseError(
            f"{response.request.method} {response.request.url.path}: the {response.status_code} body is not JSON"
        ) from exc


class BaseClient:
    """Configuration and decisions shared by :class:`Client` and :class:`AsyncClient`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        *,
        retry_policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = resolve_url(base_url)
        self.api_key = resolve_api_key(api_key)
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy(retries=retries)
        self._rng = rng or random.Random()
        self._clock = clock

    def __repr__(self) -> str:
        key = ", api_key=***" if self.api_key else ""
        return f"{type(self).__name__}({self.base_url!r}{key})"

    def _http_options(self) -> dict[str, Any]:
        headers = {
            "user-agent": f"twopass-client/{__version__} httpx/{httpx.__version__}",
            "accept": "application/json",
        }
        if self.api_key:
            headers[API_KEY_HEADER] = self.api_key
        # httpx joins relative paths onto base_url's path, so a stage prefix (…/Prod) is kept.
        return {"base_url": self.base_url + "/", "headers": headers, "timeout": httpx.Timeout(self.timeout)}

    @staticmethod
    def _request_headers() -> dict[str, str]:
        # One id for every attempt of a call: the server logs it, so a retried call reads as one.
        return {"x-request-id": uuid.uuid4().hex}

    @staticmethod
    def _predict_body(image: ImageInput) -> tuple[bytes, dict[str, str]]:
        # A raw image/* body rather than JSON base64: a third smaller and nothing to encode.
        data = read_image(image)
        return data, {"content-type": content_type(data)}

    @staticmethod
    def _job_path(job: JobRef) -> str:
        return "job/" + quote(job_id_of(job), safe="")

    def _retry_delay(
        self, attempt: int, method: str, response: httpx.Response | None, error: Exception | None
    ) -> float | None:
        """Seconds to sleep before attempt ``attempt + 1``, or None to give up now."""
        policy = self.retry_policy
        if attempt >= policy.retries:
            return None
        if error is not None:
            if isinstance(error, _NOT_SENT_ERRORS) or (method in _IDEMPOTENT and isinstance(error, _MAYBE_SENT_ERRORS)):
                return policy.backoff_delay(attempt, self._rng)
            return None
        if response is None or response.status_code not in _RETRY_STATUSES:
            return None
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is None:
            return policy.backoff_delay(attempt, self._rng)
        return retry_after if retry_after <= policy.max_retry_after else None

    def _transport_error(self, request: httpx.Request, error: Exception, attempts: int) -> TransportError:
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        return TransportError(
            f"cannot reach twopass at {self.base_url}: {type(error).__name__}: {error or 'no detail'}{tries}",
            url=str(request.url),
            attempts=attempts,
        )

    def _poll_delays(self, poll_interval: float, max_interval: float) -> Iterator[float]:
        """Sleeps between polls: doubling up to ``max_interval``, each drawn from [cap/2, cap].

        Half-jitter here rather than full: a poll interval of ~0 would just hammer the server.
        """
        if poll_interval <= 0 or max_interval < poll_interval:
            raise ValueError("need 0 < poll_interval <= max_interval")
        n = 0
        while True:
            cap = min(max_interval, poll_interval * 2.0**n)
            yield self._rng.uniform(cap / 2, cap)
            n += 1

    @staticmethod
    def _finish(result: JobResult, raise_on_failure: bool) -> JobResult:
        if raise_on_failure and result.failed:
            raise JobFailedError(result)
        return result

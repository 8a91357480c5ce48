"""What the blocking and the asyncio clients share: configuration, request building, image input,
the retry policy, error mapping and the polling schedule. No I/O happens here, so both clients
run exactly the same decisions and differ only in how they send and sleep.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import math
import os
import random
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import quote, urlsplit

import httpx

from twopass import __version__
from twopass.client import hints
from twopass.client._models import BatchItemError, JobHandle, JobResult, Prediction
from twopass.client.exceptions import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    InvalidInputError,
    NotFoundError,
    NotTwopassError,
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
DEFAULT_URL: Final = hints.LOCAL_URL
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
# The only route whose 404 is twopass's own answer ("no such job"); any other 404 is a route miss.
_JOB_ROUTE: Final = "job/"
# ...besides a 404 that names what was not found: an upload a POST /predict referred to.
_OWN_NOT_FOUND_CODES: Final = frozenset({"upload_not_found"})
#: Images up to this size are sent inline without asking the server for its limits (no server takes less).
UPLOAD_PROBE_BYTES: Final = 1024 * 1024
#: What an upload may hold (the server's POST /uploads takes these types).
UPLOAD_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"})
#: The most items one ``POST /batches`` takes.
BATCH_MAX_ITEMS: Final = 100
#: A batch body's room for everything but its items (the options, the braces).
_BATCH_OVERHEAD: Final = 256
#: The longest ``GET /job/{id}?wait=`` a server takes.
SERVER_WAIT_MAX: Final = 20.0
# Starlette's detail for a path no route matches (twopass keeps it in its {"error", "detail"} body).
_NO_ROUTE_DETAIL: Final = "Not Found"
_HTML_TITLE: Final = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SNIPPET: Final = 80

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
    if isinstance(job, Prediction):
        if job.job_id is None:
            raise InvalidInputError(
                "this prediction has no job: the service was overloaded and shed the slow pass (status shed); "
                "predict with on_overload='reject' to be told to retry instead"
            )
        return job.job_id
    if isinstance(job, JobHandle | JobResult):
        return job.job_id
    raise InvalidInputError(f"expected a job id, JobHandle, Prediction or JobResult, got {type(job).__name__}")


#: What ``priority=`` and ``on_overload=`` accept (the server says the same, but a typo is caught before sending).
PRIORITIES: Final = frozenset({"high", "normal"})
OVERLOAD_CHOICES: Final = frozenset({"shed", "reject"})
#: Statuses ``jobs(status=…)`` can filter on: every job status (``shed`` is a prediction's only).
JOB_STATUSES: Final = frozenset({"queued", "running", "succeeded", "failed", "cancelled", "expired"})


def predict_params(deadline_seconds: float | None, priority: str | None, on_overload: str | None) -> dict[str, str]:
    """The query parameters of ``POST /predict`` for a job's options (a raw image body carries no JSON)."""
    params: dict[str, str] = {}
    if deadline_seconds is not None:
        if isinstance(deadline_seconds, bool) or not isinstance(deadline_seconds, int | float):
            raise InvalidInputError(f"deadline_seconds must be a number, got {type(deadline_seconds).__name__}")
        if not math.isfinite(deadline_seconds) or deadline_seconds < 1:
            raise InvalidInputError(f"deadline_seconds must be at least 1, got {deadline_seconds}")
        params["deadline_seconds"] = format(deadline_seconds, "g")
    if priority is not None:
        if priority not in PRIORITIES:
            raise InvalidInputError(f"priority must be 'high' or 'normal', got {priority!r}")
        params["priority"] = str(priority)
    if on_overload is not None:
        if on_overload not in OVERLOAD_CHOICES:
            raise InvalidInputError(f"on_overload must be 'shed' or 'reject', got {on_overload!r}")
        params["on_overload"] = str(on_overload)
    return params


def batch_options(deadline_seconds: float | None, priority: str | None, on_overload: str | None) -> dict[str, Any]:
    """The job options of ``POST /batches``, as JSON fields (validated as ``predict``'s are)."""
    params = predict_params(deadline_seconds, priority, on_overload)
    options: dict[str, Any] = dict(params)
    if "deadline_seconds" in params:
        options["deadline_seconds"] = float(params["deadline_seconds"])
    return options


@dataclass(slots=True)
class BatchChunk:
    """The items of one ``POST /batches`` being gathered: each item's index among the caller's images."""

    indexes: list[int]
    items: list[dict[str, str]]
    size: int = _BATCH_OVERHEAD

    @classmethod
    def empty(cls) -> BatchChunk:
        return cls([], [])

    @staticmethod
    def item_size(item: Mapping[str, str]) -> int:
        # {"image_data": "<base64>"}, plus the comma and space between items.
        return sum(len(key) + len(value) + 8 for key, value in item.items()) + 2

    def fits(self, item: Mapping[str, str], body_limit: int) -> bool:
        return len(self.items) < BATCH_MAX_ITEMS and self.size + self.item_size(item) <= body_limit

    def add(self, index: int, item: dict[str, str]) -> None:
        self.indexes.append(index)
        self.items.append(item)
        self.size += self.item_size(item)

    def request(self, options: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({"items": self.items, **options}, separators=(",", ":")).encode()
        return body, {"content-type": "application/json"}

    def place(
        self, answers: list[Prediction | BatchItemError], results: list[Prediction | BatchItemError | None]
    ) -> None:
        """Put the batch's answers at their images' places (item errors renumbered to them)."""
        for index, answer in zip(self.indexes, answers, strict=True):
            if isinstance(answer, BatchItemError):
                answer = BatchItemError(index, answer.code, answer.detail)
            results[index] = answer


def jobs_params(status: str | None, limit: int, cursor: str | None) -> dict[str, str]:
    """The query parameters of ``GET /jobs``."""
    if status is not None and status not in JOB_STATUSES:
        raise InvalidInputError(f"status must be one of {', '.join(sorted(JOB_STATUSES))}, got {status!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
        raise InvalidInputError(f"limit must be an integer from 1 to 100, got {limit!r}")
    params = {"limit": str(limit)}
    if status is not None:
        params["status"] = str(status)
    if cursor is not None:
        params["cursor"] = cursor
    return params


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


def media_type(response: httpx.Response) -> str:
    """The answer's content type without parameters, lower case; '' when it sent none."""
    return str(response.headers.get("content-type", "")).split(";")[0].strip().lower()


def _is_json_type(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def _json_object(response: httpx.Response) -> Mapping[str, Any] | None:
    """The body as a JSON object when the answer says it is JSON and it is one; else None."""
    if not _is_json_type(media_type(response)):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, Mapping) else None


def answer_kind(response: httpx.Response) -> str | None:
    """Who wrote this error body: ``"twopass"`` (``{"error", "detail"}``), ``"gateway"`` (API Gateway's
    own ``{"message"}``), or None for anything else (an HTML page, text, another API's JSON, nothing).
    """
    body = _json_object(response)
    if body is None:
        return None
    if isinstance(body.get("error"), str) and isinstance(body.get("detail"), str):
        return "twopass"
    if isinstance(body.get("message"), str) and "detail" not in body:
        return "gateway"
    return None


def clearly_foreign(response: httpx.Response) -> bool:
    """An answer that no twopass API and no API Gateway in front of one gives: an HTML page, or JSON in
    another shape. (Plain text or nothing may still be twopass's server failing before its handlers.)
    """
    media = media_type(response)
    return media == "text/html" or (_is_json_type(media) and answer_kind(response) is None)


def describe_body(response: httpx.Response) -> str:
    """A body in a few words: an HTML page's title (which says whose server it is far better than its
    doctype), else its first characters with whitespace folded; '' when empty.
    """
    text = response.text
    if media_type(response) == "text/html":
        title = _HTML_TITLE.search(text)
        if title and title.group(1).strip():
            return f"an HTML page titled {' '.join(title.group(1).split())!r}"
    snippet = " ".join(text.split())
    return snippet if len(snippet) <= _SNIPPET else snippet[: _SNIPPET - 1] + "…"


def describe_answer(response: httpx.Response) -> str:
    """What came back, in one line: ``500 text/html: an HTML page titled 'Error'``, ``307 redirect to …``."""
    status = response.status_code
    location = response.headers.get("location")
    if 300 <= status < 400 and location:
        return f"{status} redirect to {location}"
    media = media_type(response) or "no content type"
    body = describe_body(response)
    if not body:
        return f"{status} {media}, empty body"
    return f"{status} {media}: {body if body.startswith('an HTML page') else repr(body)}"


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """What ``/metadata`` says about sizes: the inline limit and, where the server takes uploads, theirs."""

    inline_max_bytes: int
    upload_max_bytes: int | None

    @classmethod
    def from_metadata(cls, body: Mapping[str, Any]) -> UploadLimits:
        given = body.get("input")
        limits: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        uploads = limits.get("uploads")
        inline = limits.get("max_bytes")
        return cls(
            inline_max_bytes=inline if isinstance(inline, int) else 4 * 1024 * 1024,
            upload_max_bytes=uploads.get("max_bytes") if isinstance(uploads, Mapping) else None,
        )


@dataclass(frozen=True, slots=True)
class UploadGrant:
    """``POST /uploads``'s answer: where to PUT the image, and (from servers that offer one) where to POST it."""

    upload_id: str
    url: str
    method: str
    headers: dict[str, str]
    #: The presigned POST's URL and form fields; ``None`` from a server that offers only the PUT.
    post_url: str | None = None
    post_fields: dict[str, str] | None = None

    @classmethod
    def from_json(cls, body: Any) -> UploadGrant:
        if not isinstance(body, Mapping):
            raise ResponseError(f"POST /uploads: expected a JSON object, got {type(body).__name__}")
        try:
            headers = {str(k): str(v) for k, v in dict(body["headers"]).items()}
            post = body.get("post")
            if isinstance(post, Mapping):
                fields = {str(k): str(v) for k, v in dict(post["fields"]).items()}
                upload_id, url, method = str(body["upload_id"]), str(body["url"]), str(body["method"])
                return cls(upload_id, url, method, headers, str(post["url"]), fields)
            return cls(str(body["upload_id"]), str(body["url"]), str(body["method"]), headers)
        except (KeyError, TypeError, ValueError) as exc:
            raise ResponseError(f"POST /uploads: unexpected response body ({type(exc).__name__}: {exc})") from exc


class BaseClient:
    """Configuration and decisions shared by :class:`Client` and :class:`AsyncClient`."""

    #: How error messages tell the reader to set the URL and the key (the CLI names its options).
    _hint_style: ClassVar[hints.HintStyle] = hints.SDK
    #: Each twin's own httpx client; the shared calls only build requests with it.
    _http: httpx.Client | httpx.AsyncClient

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
        #: The server's limits, read from /metadata the first time an image may be too big to send inline.
        self._limits: UploadLimits | None = None
        #: Whether the server holds ``GET /job/{id}?wait=``; None until an answer tells.
        self._server_waits: bool | None = None

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

    def _needs_limits(self, size: int) -> bool:
        """Whether the server's limits must be read before sending an image of ``size`` bytes."""
        return size > UPLOAD_PROBE_BYTES and self._limits is None

    def _should_upload(self, data: bytes) -> bool:
        """Whether ``data`` goes through ``POST /uploads`` (too big inline, and the server takes uploads)."""
        limits = self._limits
        if limits is None or limits.upload_max_bytes is None or len(data) <= limits.inline_max_bytes:
            return False
        return content_type(data) in UPLOAD_TYPES

    def _batch_body_limit(self) -> int:
        """The largest ``POST /batches`` body: as the server's JSON limit, the inline limit in base64 plus
        room for the other fields; the smallest any server takes until ``/metadata`` has been read."""
        inline = self._limits.inline_max_bytes if self._limits is not None else UPLOAD_PROBE_BYTES
        return inline * 4 // 3 + 4096

    def _batch_needs_limits(self, chunk: BatchChunk, item: Mapping[str, str]) -> bool:
        """Whether the server's limits must be read before ``item`` joins ``chunk`` (it would pass the
        smallest limit, and the server's may be larger)."""
        return self._limits is None and chunk.size + chunk.item_size(item) > self._batch_body_limit()

    def _batch_item(self, index: int, data: bytes) -> dict[str, str] | BatchItemError:
        """The inline item of an image, or its error when it cannot fit in any batch."""
        item = {"image_data": base64.b64encode(data).decode("ascii")}
        if BatchChunk.empty().fits(item, self._batch_body_limit()):
            return item
        limit = self._limits.inline_max_bytes if self._limits is not None else UPLOAD_PROBE_BYTES
        return BatchItemError(
            index, "payload_too_large", f"the image is {len(data)} bytes; this server takes up to {limit} inline"
        )

    def _server_wait(self, deadline: float | None) -> float:
        """Seconds to ask the server to hold ``GET /job/{id}``: 0 where it does not, else up to 20, within
        the caller's deadline and a margin under this client's read timeout."""
        if self._server_waits is False:
            return 0.0
        ask = min(SERVER_WAIT_MAX, self.timeout - 2.0)
        if deadline is not None:
            ask = min(ask, deadline - self._clock())
        return math.floor(max(0.0, ask) * 100) / 100

    def _learn_server_wait(self, asked: float, took: float, result: JobResult) -> bool:
        """After a wait that came back unfinished: whether the server held it (else it ignores ``wait``)."""
        if asked > 0 and not result.done:
            self._server_waits = took >= asked / 2
        return bool(self._server_waits) and asked > 0

    @staticmethod
    def _job_path(job: JobRef) -> str:
        return "job/" + quote(job_id_of(job), safe="")

    @staticmethod
    def _retry_path(job: JobRef) -> str:
        return "job/" + quote(job_id_of(job), safe="") + "/retry"

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
        if response.status_code == 500 and clearly_foreign(response):
            # An HTML 500 is another server's error page: asking it again only delays telling the
            # user that the URL is wrong.
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
            hint=hints.unreachable(self._hint_style, self.base_url),
        )

    def _route(self, request: httpx.Request) -> str:
        """The request's path below the base URL: ``health``, ``job/<id>``, ``predict``."""
        base_path = urlsplit(self.base_url).path.rstrip("/")
        return request.url.path.removeprefix(base_path).lstrip("/")

    def _not_twopass(self, response: httpx.Response, got: str) -> NotTwopassError:
        return NotTwopassError(
            hints.not_twopass(self._hint_style, self.base_url, got),
            url=str(response.request.url),
            status=response.status_code,
            got=got,
        )

    def _decode[T](self, response: httpx.Response, parse: Callable[[Any], T]) -> T:
        """The typed result of a 2xx answer; an answer no twopass API gives is a NotTwopassError."""
        media = media_type(response)
        if not _is_json_type(media):
            raise self._not_twopass(response, describe_answer(response))
        try:
            body = response.json()
        except ValueError as exc:
            raise self._not_twopass(response, f"{response.status_code} {media} that does not parse as JSON") from exc
        try:
            return parse(body)
        except ResponseError as exc:
            got = f"{response.status_code} JSON that is not a twopass answer: {exc}"
            raise self._not_twopass(response, got) from exc

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


def error_for(client: BaseClient, response: httpx.Response, *, request_id: str | None, attempts: int) -> ClientError:
    """The exception for an error answer: the ApiError subclass with the server's code and sentence and,
    where the client can tell, what to do about it; NotTwopassError when no twopass API wrote it.
    """
    status = response.status_code
    kind = answer_kind(response)
    body = _json_object(response) or {}
    route = client._route(response.request)
    where = f"{response.request.method} {response.request.url.path}"
    if kind == "gateway" and status == 403 and body.get("message") == hints.GATEWAY_NO_ROUTE:
        # API Gateway answers a path or stage it does not have this way, key or no key.
        got = f"403 {hints.GATEWAY_NO_ROUTE!r} from API Gateway on {where}: no such route"
        return client._not_twopass(response, got)
    if kind is not None and status == 404:
        detail = str(body.get("detail") or body.get("message") or "")
        own = route.startswith(_JOB_ROUTE) or body.get("error") in _OWN_NOT_FOUND_CODES
        if not own or detail == _NO_ROUTE_DETAIL:
            # Every twopass API has this route, so a 404 means the base URL's path is wrong.
            return client._not_twopass(response, f"404 on {where}: {detail or 'not found'}")
    hint: str | None = None
    if kind is None:
        # 429/502/503/504 from a proxy or a load balancer in front of twopass can be HTML too, and a
        # server failing outside its handlers answers a bare 500; anything else is not twopass.
        if not (status in (429, 502, 503, 504) or (status >= 500 and not clearly_foreign(response))):
            return client._not_twopass(response, describe_answer(response))
        hint = hints.foreign_gateway_error(client._hint_style, client.base_url)
    code, detail = f"http_{status}", response.reason_phrase or "error"
    if kind == "twopass":
        code, detail = str(body["error"]), str(body["detail"])
    elif kind == "gateway":
        detail = str(body["message"])
    elif response.text.strip():
        detail = describe_body(response)
    cls = _error_class(status)
    if cls is AuthenticationError:
        hint = hints.authentication(client._hint_style, client.base_url, key_sent=bool(client.api_key))
    return cls(
        status,
        code,
        detail,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        request_id=request_id,
        attempts=attempts,
        hint=hint,
    )


def _error_class(status: int) -> type[ApiError]:
    if status in (401, 403):
        return AuthenticationError
    if status == 404:
        return NotFoundError
    if status == 429:
        return RateLimitedError
    if status in (502, 503, 504):
        return ServiceUnavailableError
    if status >= 500:
        return ServerError
    return BadRequestError if status >= 400 else ApiError

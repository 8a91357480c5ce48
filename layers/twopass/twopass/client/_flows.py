"""The client's calls written once, for both :class:`Client` and :class:`AsyncClient`: each is a generator
that yields the I/O it needs (:class:`Send` a request, :class:`Sleep`, :class:`Read` an image) and gets
its outcome back (an answer, the image's body, or the step's error thrown in). The twins only run the
steps, blocking or awaited, so both take exactly the same decisions in the same order.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx

from twopass.client._base import (
    BatchChunk,
    ImageInput,
    JobRef,
    UploadGrant,
    UploadLimits,
    content_type,
    describe_answer,
    error_for,
    job_id_of,
)
from twopass.client._models import BatchItemError, JobResult, Prediction, batch_items_from_json, metadata_from_json
from twopass.client.exceptions import (
    ApiError,
    BadRequestError,
    InvalidInputError,
    JobFailedError,
    ServiceUnavailableError,
    WaitTimeoutError,
)

if TYPE_CHECKING:
    from twopass.client._base import BaseClient


@dataclass(frozen=True, slots=True)
class Send:
    """Send the request: its answer comes back, or the transport error is thrown in."""

    request: httpx.Request


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Read:
    """The image's body and headers (the asyncio client reads files and encodes PIL images in a thread)."""

    image: ImageInput


type Step = Send | Sleep | Read
type Flow[T] = Generator[Step, Any, T]

#: The errors a step hands back to its flow, which decides: retry, an image's own error, or raise.
STEP_ERRORS: Final = (httpx.TransportError, InvalidInputError, OSError)
_JSON: Final = {"content-type": "application/json"}


def run[T](flow: Flow[T], do: Callable[[Step], Any]) -> T:
    """Run ``flow`` to its end, each step done by ``do`` (blocking)."""
    outcome: Any = None
    error: Exception | None = None
    while True:
        try:
            step = flow.send(outcome) if error is None else flow.throw(error)
        except StopIteration as done:
            result: T = done.value
            return result
        outcome, error = None, None
        try:
            outcome = do(step)
        except STEP_ERRORS as exc:
            error = exc


async def arun[T](flow: Flow[T], do: Callable[[Step], Awaitable[Any]]) -> T:
    """Run ``flow`` to its end, each step done by ``do`` (awaited)."""
    outcome: Any = None
    error: Exception | None = None
    while True:
        try:
            step = flow.send(outcome) if error is None else flow.throw(error)
        except StopIteration as done:
            result: T = done.value
            return result
        outcome, error = None, None
        try:
            outcome = await do(step)
        except STEP_ERRORS as exc:
            error = exc


def predict_many_and_wait(
    client: BaseClient,
    images: Iterable[ImageInput],
    options: Mapping[str, Any],
    timeout: float | None,
    poll_interval: float,
    max_interval: float,
) -> Flow[list[JobResult | BatchItemError]]:
    """``predict_many`` then ``wait`` for each job in turn, all within ``timeout``; failed jobs returned."""
    predictions = yield from predict_many(client, images, options)
    return (yield from _wait_each(client, predictions, timeout, poll_interval, max_interval))


def predict_and_wait(
    client: BaseClient,
    image: ImageInput,
    params: dict[str, str],
    timeout: float | None,
    poll_interval: float,
    max_interval: float,
    raise_on_failure: bool,
) -> Flow[JobResult]:
    prediction = yield from predict(client, image, params)
    return (yield from wait(client, prediction, timeout, poll_interval, max_interval, raise_on_failure))


def _wait_each(
    client: BaseClient,
    predictions: list[Prediction | BatchItemError],
    timeout: float | None,
    poll_interval: float,
    max_interval: float,
) -> Flow[list[JobResult | BatchItemError]]:
    """``wait`` for each job in turn, all within ``timeout``; a failed job is returned, not raised."""
    deadline = None if timeout is None else client._clock() + timeout
    results: list[JobResult | BatchItemError] = []
    for prediction in predictions:
        if isinstance(prediction, BatchItemError):
            results.append(prediction)
            continue
        remaining = None if deadline is None else max(0.0, deadline - client._clock())
        results.append((yield from wait(client, prediction, remaining, poll_interval, max_interval, False)))
    return results


def _send(client: BaseClient, request: httpx.Request, method: str) -> Flow[tuple[httpx.Response, int]]:
    """Send with retries: the last answer (a success, or an error not worth another try) and the attempts."""
    attempt = 0
    while True:
        try:
            response: httpx.Response = yield Send(request)
        except httpx.TransportError as exc:
            delay = client._retry_delay(attempt, method, None, exc)
            if delay is None:
                raise client._transport_error(request, exc, attempt + 1) from exc
        else:
            if response.is_success:
                return response, attempt + 1
            delay = client._retry_delay(attempt, method, response, None)
            if delay is None:
                return response, attempt + 1
        yield Sleep(delay)
        attempt += 1


def call[T](
    client: BaseClient,
    method: str,
    path: str,
    parse: Callable[[Any], T],
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> Flow[T]:
    """Send with retries; ``parse`` of a 2xx answer's JSON, else the mapped exception."""
    request_headers = client._request_headers() | (headers or {})
    request = client._http.build_request(method, path, content=content, headers=request_headers, params=params)
    response, attempts = yield from _send(client, request, method)
    if response.is_success:
        return client._decode(response, parse)
    raise error_for(client, response, request_id=request_headers["x-request-id"], attempts=attempts)


def _read_limits(client: BaseClient) -> Flow[None]:
    client._limits = UploadLimits.from_metadata((yield from call(client, "GET", "metadata", metadata_from_json)))


def _upload(client: BaseClient, data: bytes) -> Flow[str]:
    """Put the image in the bucket (``POST /uploads``, then its presigned POST, or PUT from a server that
    offers no POST); its upload id."""
    media = content_type(data)
    body = json.dumps({"content_type": media, "content_length": len(data)}).encode()
    grant = yield from call(client, "POST", "uploads", UploadGrant.from_json, content=body, headers=_JSON)
    # Built outside the client's defaults: the API key must not travel to S3.
    if grant.post_url is not None and grant.post_fields is not None:
        # The POST's policy has S3 itself cap the size. The fields go first: S3 ignores any after the file.
        request = httpx.Request("POST", grant.post_url, data=grant.post_fields, files={"file": ("image", data, media)})
    else:
        request = httpx.Request(grant.method, grant.url, content=data, headers=grant.headers)
    # Sending the same object to the same key again is harmless: retried as a PUT would be.
    response, attempts = yield from _send(client, request, "PUT")
    if not response.is_success:
        raise _put_error(response, attempts)
    return grant.upload_id


def _put_error(response: httpx.Response, attempts: int) -> ApiError:
    """The exception for a PUT the bucket refused (S3 answers in XML: its code is in <Code>)."""
    code = re.search(r"<Code>([^<]+)</Code>", response.text)
    detail = f"the upload's {response.request.method} was refused: {describe_answer(response)}"
    cls = ServiceUnavailableError if response.status_code >= 500 else BadRequestError
    return cls(response.status_code, code.group(1) if code else "upload_failed", detail, attempts=attempts)


def predict(client: BaseClient, image: ImageInput, params: dict[str, str]) -> Flow[Prediction]:
    """``POST /predict``: the raw image, or for one over the inline limit its upload's id."""
    content, headers = yield Read(image)
    if client._needs_limits(len(content)):
        yield from _read_limits(client)
    if not client._should_upload(content):
        return (
            yield from call(
                client, "POST", "predict", Prediction.from_json, content=content, headers=headers, params=params
            )
        )
    # The job options go as the JSON body's fields, not as parameters.
    body: dict[str, Any] = {"upload_id": (yield from _upload(client, content))}
    if "deadline_seconds" in params:
        body["deadline_seconds"] = float(params["deadline_seconds"])
    body.update((name, params[name]) for name in ("priority", "on_overload") if name in params)
    return (
        yield from call(
            client, "POST", "predict", Prediction.from_json, content=json.dumps(body).encode(), headers=_JSON
        )
    )


def predict_many(
    client: BaseClient, images: Iterable[ImageInput], options: Mapping[str, Any]
) -> Flow[list[Prediction | BatchItemError]]:
    """``POST /batches`` in chunks within the server's limits: one answer per image, in order."""
    results: list[Prediction | BatchItemError | None] = []
    chunk = BatchChunk.empty()
    for index, image in enumerate(images):
        results.append(None)
        item = yield from _batch_item(client, index, image)
        if isinstance(item, BatchItemError):
            results[index] = item
            continue
        if client._batch_needs_limits(chunk, item):
            yield from _read_limits(client)
        if not chunk.fits(item, client._batch_body_limit()):
            yield from _send_batch(client, chunk, options, results)
            chunk = BatchChunk.empty()
        chunk.add(index, item)
    if chunk.items:
        yield from _send_batch(client, chunk, options, results)
    return [result for result in results if result is not None]


def _batch_item(client: BaseClient, index: int, image: ImageInput) -> Flow[dict[str, str] | BatchItemError]:
    """An image's batch item (inline, or its upload's id), or its error: unreadable, too big, refused."""
    try:
        data: bytes = (yield Read(image))[0]
    except (InvalidInputError, OSError) as exc:
        return BatchItemError(index, "invalid_input", str(exc) or type(exc).__name__)
    if client._needs_limits(len(data)):
        yield from _read_limits(client)
    if not client._should_upload(data):
        return client._batch_item(index, data)
    try:
        return {"upload_id": (yield from _upload(client, data))}
    except BadRequestError as exc:  # this image's refusal (its type, its size), not the service's
        return BatchItemError(index, exc.code, exc.detail)


def _send_batch(
    client: BaseClient,
    chunk: BatchChunk,
    options: Mapping[str, Any],
    results: list[Prediction | BatchItemError | None],
) -> Flow[None]:
    body, headers = chunk.request(options)
    parse = functools.partial(batch_items_from_json, count=len(chunk.items))
    chunk.place((yield from call(client, "POST", "batches", parse, content=body, headers=headers)), results)


#: How long :func:`retry` keeps asking while the server says the job's image is on its way (409
#: ``image_pending``: a worker keeps a cancelled job's image when it meets the job's message; a busy
#: worker may take a while to start, and one scaled from zero a task start).
IMAGE_PENDING_WAIT: Final = 120.0


def retry(client: BaseClient, job: JobRef) -> Flow[JobResult]:
    """``POST /job/{id}/retry``, asked again after its ``Retry-After`` while the image is on its way."""
    deadline = client._clock() + IMAGE_PENDING_WAIT
    while True:
        try:
            return (yield from call(client, "POST", client._retry_path(job), JobResult.from_json))
        except BadRequestError as exc:
            delay = exc.retry_after if exc.retry_after is not None else 1.0
            if exc.code != "image_pending" or client._clock() + delay > deadline:
                raise
        yield Sleep(delay)


def wait(
    client: BaseClient,
    job: JobRef,
    timeout: float | None,
    poll_interval: float,
    max_interval: float,
    raise_on_failure: bool,
) -> Flow[JobResult]:
    """Until the job ended: ``GET /job/{id}?wait=`` held by the server, else polls at growing intervals."""
    job_id = job_id_of(job)
    deadline = None if timeout is None else client._clock() + timeout
    delays = client._poll_delays(poll_interval, max_interval)
    while True:
        ask = client._server_wait(deadline)
        started = client._clock()
        params = {"wait": f"{ask:g}"} if ask > 0 else None
        result = yield from call(client, "GET", client._job_path(job_id), JobResult.from_json, params=params)
        if result.done:
            # Failed, cancelled and expired jobs all ended without the answer the caller waits for.
            if raise_on_failure and not result.succeeded:
                raise JobFailedError(result)
            return result
        if client._learn_server_wait(ask, client._clock() - started, result):
            # The server held the request for the wait asked: ask again at once, no sleep between.
            if deadline is not None and deadline <= client._clock():
                raise WaitTimeoutError(job_id, timeout or 0.0, result)
            continue
        delay = next(delays)
        if deadline is not None:
            remaining = deadline - client._clock()
            if remaining <= 0:
                raise WaitTimeoutError(job_id, timeout or 0.0, result)
            # The last sleep ends at the deadline, so one final poll happens right on it.
            delay = min(delay, remaining)
        yield Sleep(delay)

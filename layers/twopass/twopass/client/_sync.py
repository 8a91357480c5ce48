"""The blocking client."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Self

import httpx

from twopass.client._base import (
    BaseClient,
    BatchChunk,
    ImageInput,
    JobRef,
    RetryPolicy,
    UploadGrant,
    UploadLimits,
    batch_options,
    job_id_of,
    jobs_params,
    predict_params,
)
from twopass.client._models import (
    BatchItemError,
    Health,
    JobPage,
    JobResult,
    Prediction,
    batch_items_from_json,
    metadata_from_json,
)
from twopass.client.exceptions import BadRequestError, EventLoopError, InvalidInputError, WaitTimeoutError

__all__ = ["Client"]


class Client(BaseClient):
    """Blocking twopass client.

    >>> with Client("http://127.0.0.1:3000") as tp:
    ...     result = tp.predict_and_wait("cat.jpg")

    ``base_url`` defaults to ``$TWOPASS_URL`` (else http://127.0.0.1:3000) and ``api_key`` to
    ``$TWOPASS_API_KEY``. ``retries`` is how many times a call is repeated after a connection error,
    429 or 5xx. ``transport`` is any ``httpx.BaseTransport`` (tests pass ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retries, retry_policy=retry_policy, rng=rng, clock=clock)
        self._sleep = sleep
        self._http = httpx.Client(transport=transport, **self._http_options())

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- API ---------------------------------------------------------------------------------

    def predict(
        self,
        image: ImageInput,
        *,
        deadline_seconds: float | None = None,
        priority: str | None = None,
        on_overload: str | None = None,
    ) -> Prediction:
        """Classify ``image`` with the fast model now; the slow model's job is queued.

        ``deadline_seconds``: a worker must start the job within this many seconds, else it ends
        ``expired`` (1 to the queue's retention). ``priority``: ``"high"`` jobs go to the high-priority
        queue, taken first. ``on_overload``: when the service is over its backlog limit, ``"shed"``
        (its default) answers with the fast model alone (``status`` ``shed``, no job), ``"reject"``
        raises RateLimitedError once the retries are spent.

        An image over the server's inline limit (``/metadata``, read once) goes through ``POST /uploads``:
        a presigned PUT straight to the bucket, then ``POST /predict {"upload_id"}``.
        """
        params = predict_params(deadline_seconds, priority, on_overload)
        content, headers = self._predict_body(image)
        if self._needs_limits(len(content)):
            self._limits = UploadLimits.from_metadata(self.metadata())
        if self._should_upload(content):
            return self._predict_uploaded(content, params)
        return self._call("POST", "predict", Prediction.from_json, content=content, headers=headers, params=params)

    def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        deadline_seconds: float | None = None,
        priority: str | None = None,
        on_overload: str | None = None,
    ) -> list[Prediction | BatchItemError]:
        """``predict`` for many images through ``POST /batches``: one :class:`Prediction` or
        :class:`BatchItemError` per image, in order. An image the server refuses (not an image, too many
        pixels…) or that cannot be read is its item's error and never stops the others.

        Images go in batches of up to 100 within the server's body limit (``/metadata``, read once);
        one over the inline limit is uploaded first (``POST /uploads``) and sent as its ``upload_id``.
        The options are ``predict``'s, for every image.
        """
        options = batch_options(deadline_seconds, priority, on_overload)
        results: list[Prediction | BatchItemError | None] = []
        chunk = BatchChunk.empty()
        for index, image in enumerate(images):
            results.append(None)
            try:
                data = self._predict_body(image)[0]
            except (InvalidInputError, OSError) as exc:
                results[index] = self._unreadable(index, exc)
                continue
            if self._needs_limits(len(data)):
                self._limits = UploadLimits.from_metadata(self.metadata())
            item: dict[str, str] | BatchItemError
            if self._should_upload(data):
                try:
                    item = {"upload_id": self._upload(data)}
                except BadRequestError as exc:  # this image's refusal (its type, its size), not the service's
                    item = BatchItemError(index, exc.code, exc.detail)
            else:
                item = self._batch_item(index, data)
            if isinstance(item, BatchItemError):
                results[index] = item
                continue
            if self._batch_needs_limits(chunk, item):
                self._limits = UploadLimits.from_metadata(self.metadata())
            if not chunk.fits(item, self._batch_body_limit()):
                self._send_batch(chunk, options, results)
                chunk = BatchChunk.empty()
            chunk.add(index, item)
        if chunk.items:
            self._send_batch(chunk, options, results)
        return [result for result in results if result is not None]

    def predict_many_and_wait(
        self,
        images: Iterable[ImageInput],
        timeout: float | None = 60.0,
        *,
        poll_interval: float = 0.5,
        max_interval: float = 5.0,
        deadline_seconds: float | None = None,
        priority: str | None = None,
    ) -> list[JobResult | BatchItemError]:
        """``predict_many`` then ``wait`` for each job: one :class:`JobResult` or :class:`BatchItemError` per
        image, in order. A job that failed, was cancelled or expired is returned as its result (check
        ``succeeded``) rather than raised, so one job's end never hides the others'. Raises
        WaitTimeoutError when ``timeout`` seconds (for them all) pass before every job ended.

        As in ``predict_and_wait``, an overloaded service is asked to refuse rather than shed.
        """
        predictions = self.predict_many(
            images, deadline_seconds=deadline_seconds, priority=priority, on_overload="reject"
        )
        deadline = None if timeout is None else self._clock() + timeout
        results: list[JobResult | BatchItemError] = []
        for prediction in predictions:
            if isinstance(prediction, BatchItemError):
                results.append(prediction)
                continue
            remaining = None if deadline is None else max(0.0, deadline - self._clock())
            results.append(
                self.wait(
                    prediction,
                    remaining,
                    poll_interval=poll_interval,
                    max_interval=max_interval,
                    raise_on_failure=False,
                )
            )
        return results

    def job(self, job: JobRef) -> JobResult:
        """The job's current state (raises NotFoundError for an unknown or expired id)."""
        return self._call("GET", self._job_path(job), JobResult.from_json)

    def cancel(self, job: JobRef) -> JobResult:
        """Cancel a queued or running job: it is never run, or its slow result is discarded.

        Returns the cancelled job. A job that had already ended raises BadRequestError (409,
        ``job_final``); an unknown one NotFoundError.
        """
        return self._call("DELETE", self._job_path(job), JobResult.from_json)

    def retry(self, job: JobRef) -> JobResult:
        """Queue a failed, expired or cancelled job again under the same id; returns it, ``queued``.

        Raises BadRequestError with ``code`` ``job_not_retryable`` (409) for a job in another state,
        and ``image_gone`` (410) once its image is no longer kept.
        """
        return self._call("POST", self._retry_path(job), JobResult.from_json)

    def jobs(self, status: str | None = None, *, limit: int = 20, cursor: str | None = None) -> Iterator[JobPage]:
        """Your jobs, newest first, one :class:`JobPage` at a time (each holds up to ``limit``, 1-100).

        ``status`` keeps only jobs in that status; ``cursor`` starts from a page's ``next_cursor``.
        Pages are fetched as the iteration reaches them.
        """
        while True:
            page = self._call("GET", "jobs", JobPage.from_json, params=jobs_params(status, limit, cursor))
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def wait(
        self,
        job: JobRef,
        timeout: float | None = 60.0,
        *,
        poll_interval: float = 0.5,
        max_interval: float = 5.0,
        raise_on_failure: bool = True,
    ) -> JobResult:
        """Wait until the job ended: each ``GET /job/{id}?wait=`` is held by the server until the job ends
        (up to 20 s, within ``timeout``); against a server that answers at once, poll every
        ``poll_interval`` doubling to ``max_interval``.

        Raises WaitTimeoutError after ``timeout`` seconds (None: no limit) and JobFailedError when
        it failed, was cancelled or expired, unless ``raise_on_failure=False``, which returns that
        result instead.
        """
        job_id = job_id_of(job)
        deadline = None if timeout is None else self._clock() + timeout
        delays = self._poll_delays(poll_interval, max_interval)
        while True:
            ask = self._server_wait(deadline)
            started = self._clock()
            params = {"wait": f"{ask:g}"} if ask > 0 else None
            result = self._call("GET", self._job_path(job_id), JobResult.from_json, params=params)
            if result.done:
                return self._finish(result, raise_on_failure)
            if self._learn_server_wait(ask, self._clock() - started, result):
                # The server held the request for the wait asked: ask again at once, no sleep between.
                if deadline is not None and deadline <= self._clock():
                    raise WaitTimeoutError(job_id, timeout or 0.0, result)
                continue
            delay = next(delays)
            if deadline is not None:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise WaitTimeoutError(job_id, timeout or 0.0, result)
                # The last sleep ends at the deadline, so one final poll happens right on it.
                delay = min(delay, remaining)
            self._sleep(delay)

    def predict_and_wait(
        self,
        image: ImageInput,
        timeout: float | None = 60.0,
        *,
        poll_interval: float = 0.5,
        max_interval: float = 5.0,
        raise_on_failure: bool = True,
        deadline_seconds: float | None = None,
        priority: str | None = None,
    ) -> JobResult:
        """``predict`` then ``wait``: the slow model's result for ``image``.

        Only the slow answer is wanted here, so an overloaded service is asked to refuse (429, retried
        after its Retry-After) rather than shed the slow pass.
        """
        prediction = self.predict(image, deadline_seconds=deadline_seconds, priority=priority, on_overload="reject")
        return self.wait(
            prediction,
            timeout,
            poll_interval=poll_interval,
            max_interval=max_interval,
            raise_on_failure=raise_on_failure,
        )

    def health(self) -> Health:
        """Liveness of the API alone (``GET /health``)."""
        return self._call("GET", "health", Health.from_json)

    def health_all(self) -> Health:
        """Every backend's health (``GET /health/all``); ``status`` is ``ok`` or ``degraded``."""
        return self._call("GET", "health/all", Health.from_json)

    def metadata(self) -> dict[str, Any]:
        """The input/output contract and both model cards (``GET /metadata``)."""
        return self._call("GET", "metadata", metadata_from_json)

    def _predict_uploaded(self, data: bytes, params: dict[str, str]) -> Prediction:
        body, headers = self._uploaded_predict_body(self._upload(data), params)
        return self._call("POST", "predict", Prediction.from_json, content=body, headers=headers)

    def _upload(self, data: bytes) -> str:
        """Put the image in the bucket (``POST /uploads``, then its presigned PUT); its upload id."""
        body, headers = self._upload_request(data)
        grant = self._call("POST", "uploads", UploadGrant.from_json, content=body, headers=headers)
        self._put(grant, data)
        return grant.upload_id

    def _send_batch(
        self, chunk: BatchChunk, options: dict[str, Any], results: list[Prediction | BatchItemError | None]
    ) -> None:
        body, headers = chunk.request(options)
        parse = functools.partial(batch_items_from_json, count=len(chunk.items))
        answers = self._call("POST", "batches", parse, content=body, headers=headers)
        chunk.place(answers, results)

    def _put(self, grant: UploadGrant, data: bytes) -> None:
        """PUT the image to the upload's URL, retried like any idempotent call."""
        attempt = 0
        while True:
            request = self._put_request(grant, data)
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = self._retry_delay(attempt, "PUT", None, exc)
                if delay is None:
                    raise self._transport_error(request, exc, attempt + 1) from exc
            else:
                if response.is_success:
                    return
                delay = self._retry_delay(attempt, "PUT", response, None)
                if delay is None:
                    raise self._put_error(response, attempt + 1)
            self._sleep(delay)
            attempt += 1

    # -- transport ---------------------------------------------------------------------------

    def _call[T](
        self,
        method: str,
        path: str,
        parse: Callable[[Any], T],
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> T:
        """Send with retries; ``parse`` of a 2xx answer's JSON, else the mapped exception."""
        _refuse_running_loop()
        request_headers = self._request_headers() | (headers or {})
        request = self._http.build_request(method, path, content=content, headers=request_headers, params=params)
        attempt = 0
        while True:
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = self._retry_delay(attempt, method, None, exc)
                if delay is None:
                    raise self._transport_error(request, exc, attempt + 1) from exc
            else:
                if response.is_success:
                    return self._decode(response, parse)
                delay = self._retry_delay(attempt, method, response, None)
                if delay is None:
                    raise self._error(response, request_id=request_headers["x-request-id"], attempts=attempt + 1)
            self._sleep(delay)
            attempt += 1


def _refuse_running_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    # Blocking here would freeze every other task on the loop (a notebook kernel, an async web app).
    raise EventLoopError(
        "twopass.client.Client blocks, and this thread is running an asyncio event loop (a notebook or an "
        "async app): use twopass.client.AsyncClient and await its methods instead, "
        "e.g. `async with AsyncClient(url) as tp: await tp.predict(image)`"
    )

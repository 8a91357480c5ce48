"""The blocking client."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Self

import httpx

from twopass.client import _flows as flows
from twopass.client._base import (
    BaseClient,
    ImageInput,
    JobRef,
    RetryPolicy,
    batch_options,
    jobs_params,
    predict_params,
)
from twopass.client._models import (
    BatchItemError,
    Health,
    JobPage,
    JobResult,
    Prediction,
    metadata_from_json,
)
from twopass.client.exceptions import EventLoopError

__all__ = ["Client"]


class Client(BaseClient):
    """Blocking twopass client.

    >>> with Client("http://127.0.0.1:3000") as tp:
    ...     result = tp.predict_and_wait("cat.jpg")

    ``base_url`` defaults to ``$TWOPASS_URL`` (else http://127.0.0.1:3000) and ``api_key`` to
    ``$TWOPASS_API_KEY``. ``retries`` is how many times a call is repeated after a connection error,
    429 or 5xx. ``transport`` is any ``httpx.BaseTransport`` (tests pass ``httpx.MockTransport``).
    """

    _http: httpx.Client

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
        a presigned POST (or PUT) straight to the bucket, then ``POST /predict {"upload_id"}``.
        """
        return self._run(flows.predict(self, image, predict_params(deadline_seconds, priority, on_overload)))

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
        return self._run(flows.predict_many(self, images, batch_options(deadline_seconds, priority, on_overload)))

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
        options = batch_options(deadline_seconds, priority, "reject")
        return self._run(flows.predict_many_and_wait(self, images, options, timeout, poll_interval, max_interval))

    def job(self, job: JobRef) -> JobResult:
        """The job's current state (raises NotFoundError for an unknown or expired id)."""
        return self._run(flows.call(self, "GET", self._job_path(job), JobResult.from_json))

    def cancel(self, job: JobRef) -> JobResult:
        """Cancel a queued or running job: it is never run, or its slow result is discarded.

        Returns the cancelled job. A job that had already ended raises BadRequestError (409,
        ``job_final``); an unknown one NotFoundError.
        """
        return self._run(flows.call(self, "DELETE", self._job_path(job), JobResult.from_json))

    def retry(self, job: JobRef) -> JobResult:
        """Queue a failed, expired or cancelled job again under the same id; returns it, ``queued``.

        Right after a cancel the server may answer 409 ``image_pending`` (a worker has yet to keep the
        job's inline image): the call asks again after each ``Retry-After``, for up to 2 minutes. Raises
        BadRequestError with ``code`` ``job_not_retryable`` (409) for a job in another state,
        ``image_changed`` (409) when an upload's image was replaced since the job was accepted,
        ``payload_too_large`` (413), and ``image_gone`` (410) once its image is no longer kept.
        """
        return self._run(flows.retry(self, job))

    def jobs(self, status: str | None = None, *, limit: int = 20, cursor: str | None = None) -> Iterator[JobPage]:
        """Your jobs, newest first, one :class:`JobPage` at a time (each holds up to ``limit``, 1-100).

        ``status`` keeps only jobs in that status; ``cursor`` starts from a page's ``next_cursor``.
        Pages are fetched as the iteration reaches them.
        """
        while True:
            params = jobs_params(status, limit, cursor)
            page = self._run(flows.call(self, "GET", "jobs", JobPage.from_json, params=params))
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
        return self._run(flows.wait(self, job, timeout, poll_interval, max_interval, raise_on_failure))

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
        params = predict_params(deadline_seconds, priority, "reject")
        flow = flows.predict_and_wait(self, image, params, timeout, poll_interval, max_interval, raise_on_failure)
        return self._run(flow)

    def health(self) -> Health:
        """Liveness of the API alone (``GET /health``)."""
        return self._run(flows.call(self, "GET", "health", Health.from_json))

    def health_all(self) -> Health:
        """Every backend's health (``GET /health/all``); ``status`` is ``ok`` or ``degraded``."""
        return self._run(flows.call(self, "GET", "health/all", Health.from_json))

    def metadata(self) -> dict[str, Any]:
        """The input/output contract and both model cards (``GET /metadata``)."""
        return self._run(flows.call(self, "GET", "metadata", metadata_from_json))

    def _run[T](self, flow: flows.Flow[T]) -> T:
        return flows.run(flow, self._do)

    def _do(self, step: flows.Step) -> Any:
        """One step of a flow: send (never from inside a running event loop), sleep, or read an image."""
        if isinstance(step, flows.Send):
            _refuse_running_loop()
            return self._http.send(step.request)
        if isinstance(step, flows.Sleep):
            return self._sleep(step.seconds)
        return self._predict_body(step.image)


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

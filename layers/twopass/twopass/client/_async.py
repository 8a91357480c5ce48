"""The asyncio client: the same methods as :class:`~twopass.client.Client`, awaited."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
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

__all__ = ["AsyncClient"]


class AsyncClient(BaseClient):
    """Asyncio twopass client; works inside a running loop (Jupyter, FastAPI, ``asyncio.run``).

    >>> async with AsyncClient("http://127.0.0.1:3000") as tp:
    ...     results = await asyncio.gather(*(tp.predict_and_wait(p) for p in paths))

    Arguments as for :class:`~twopass.client.Client`; ``transport`` is an ``httpx.AsyncBaseTransport``.
    One instance serves one event loop: its connections belong to the loop that opened them.
    """

    _http: httpx.AsyncClient

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retries, retry_policy=retry_policy, rng=rng, clock=clock)
        self._sleep = sleep
        self._http = httpx.AsyncClient(transport=transport, **self._http_options())

    # -- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- API ---------------------------------------------------------------------------------

    async def predict(
        self,
        image: ImageInput,
        *,
        deadline_seconds: float | None = None,
        priority: str | None = None,
        on_overload: str | None = None,
    ) -> Prediction:
        """Classify ``image`` with the fast model now; the slow model's job is queued (see
        :meth:`twopass.client.Client.predict`)."""
        return await self._run(flows.predict(self, image, predict_params(deadline_seconds, priority, on_overload)))

    async def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        deadline_seconds: float | None = None,
        priority: str | None = None,
        on_overload: str | None = None,
    ) -> list[Prediction | BatchItemError]:
        """``predict`` for many images through ``POST /batches`` (see :meth:`twopass.client.Client.predict_many`)."""
        options = batch_options(deadline_seconds, priority, on_overload)
        return await self._run(flows.predict_many(self, images, options))

    async def predict_many_and_wait(
        self,
        images: Iterable[ImageInput],
        timeout: float | None = 60.0,
        *,
        poll_interval: float = 0.5,
        max_interval: float = 5.0,
        deadline_seconds: float | None = None,
        priority: str | None = None,
    ) -> list[JobResult | BatchItemError]:
        """``predict_many`` then ``wait`` for each job, all at once (see
        :meth:`twopass.client.Client.predict_many_and_wait`)."""
        predictions = await self.predict_many(
            images, deadline_seconds=deadline_seconds, priority=priority, on_overload="reject"
        )
        deadline = None if timeout is None else self._clock() + timeout

        async def settle(prediction: Prediction | BatchItemError) -> JobResult | BatchItemError:
            if isinstance(prediction, BatchItemError):
                return prediction
            remaining = None if deadline is None else max(0.0, deadline - self._clock())
            return await self.wait(
                prediction, remaining, poll_interval=poll_interval, max_interval=max_interval, raise_on_failure=False
            )

        return list(await asyncio.gather(*(settle(p) for p in predictions)))

    async def job(self, job: JobRef) -> JobResult:
        """The job's current state (raises NotFoundError for an unknown or expired id)."""
        return await self._run(flows.call(self, "GET", self._job_path(job), JobResult.from_json))

    async def cancel(self, job: JobRef) -> JobResult:
        """Cancel a queued or running job: it is never run, or its slow result is discarded.

        Returns the cancelled job. A job that had already ended raises BadRequestError (409,
        ``job_final``); an unknown one NotFoundError.
        """
        return await self._run(flows.call(self, "DELETE", self._job_path(job), JobResult.from_json))

    async def retry(self, job: JobRef) -> JobResult:
        """Queue a failed, expired or cancelled job again under the same id; returns it, ``queued``.

        Right after a cancel the server may answer 409 ``image_pending`` (a worker has yet to keep the
        job's inline image): the call asks again after each ``Retry-After``, for up to 2 minutes. Raises
        BadRequestError with ``code`` ``job_not_retryable`` (409) for a job in another state,
        ``image_changed`` (409) when an upload's image was replaced since the job was accepted,
        ``payload_too_large`` (413), and ``image_gone`` (410) once its image is no longer kept.
        """
        return await self._run(flows.retry(self, job))

    async def jobs(
        self, status: str | None = None, *, limit: int = 20, cursor: str | None = None
    ) -> AsyncIterator[JobPage]:
        """Your jobs, newest first, one :class:`JobPage` at a time (each holds up to ``limit``, 1-100).

        ``status`` keeps only jobs in that status; ``cursor`` starts from a page's ``next_cursor``.
        Pages are fetched as the iteration reaches them.
        """
        while True:
            params = jobs_params(status, limit, cursor)
            page = await self._run(flows.call(self, "GET", "jobs", JobPage.from_json, params=params))
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def wait(
        self,
        job: JobRef,
        timeout: float | None = 60.0,
        *,
        poll_interval: float = 0.5,
        max_interval: float = 5.0,
        raise_on_failure: bool = True,
    ) -> JobResult:
        """Poll until the job ended (see :meth:`twopass.client.Client.wait`)."""
        return await self._run(flows.wait(self, job, timeout, poll_interval, max_interval, raise_on_failure))

    async def predict_and_wait(
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
        return await self._run(flow)

    async def health(self) -> Health:
        """Liveness of the API alone (``GET /health``)."""
        return await self._run(flows.call(self, "GET", "health", Health.from_json))

    async def health_all(self) -> Health:
        """Every backend's health (``GET /health/all``); ``status`` is ``ok`` or ``degraded``."""
        return await self._run(flows.call(self, "GET", "health/all", Health.from_json))

    async def metadata(self) -> dict[str, Any]:
        """The input/output contract and both model cards (``GET /metadata``)."""
        return await self._run(flows.call(self, "GET", "metadata", metadata_from_json))

    def _run[T](self, flow: flows.Flow[T]) -> Awaitable[T]:
        return flows.arun(flow, self._do)

    async def _do(self, step: flows.Step) -> Any:
        """One step of a flow: send, sleep, or read an image (a file or a PIL image in a thread)."""
        if isinstance(step, flows.Send):
            return await self._http.send(step.request)
        if isinstance(step, flows.Sleep):
            return await self._sleep(step.seconds)
        if isinstance(step.image, bytes | bytearray | memoryview):
            return self._predict_body(step.image)
        # Reading a file or encoding a PIL image blocks; a thread keeps the loop responsive.
        return await asyncio.to_thread(self._predict_body, step.image)

"""twopass client SDK: call a twopass deployment from a script, a service or a notebook.

Needs nothing but httpx::

    from twopass.client import Client

    with Client("https://….execute-api.eu-west-1.amazonaws.com/Prod", api_key="…") as tp:
        prediction = tp.predict("cat.jpg")        # fast label now, slow job queued
        result = tp.wait(prediction, timeout=60)  # the slow model's answer
        print(prediction.label, result.label)

        for page in tp.jobs(status="failed"):       # your jobs, newest first, a page at a time
            for job in page:
                tp.retry(job)                         # queued again under the same id

``AsyncClient`` has the same methods as coroutines.
"""

from __future__ import annotations

from twopass.client._async import AsyncClient
from twopass.client._base import DEFAULT_URL, ImageInput, JobRef, RetryPolicy
from twopass.client._models import (
    BatchItemError,
    Health,
    JobHandle,
    JobOutcome,
    JobPage,
    JobResult,
    JobStatus,
    LabelScore,
    ModelResult,
    Prediction,
)
from twopass.client._sync import Client
from twopass.client.exceptions import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    EventLoopError,
    InvalidInputError,
    JobFailedError,
    NotFoundError,
    NotTwopassError,
    RateLimitedError,
    ResponseError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    TwopassError,
    WaitTimeoutError,
)

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BatchItemError",
    "Client",
    "ClientError",
    "EventLoopError",
    "Health",
    "ImageInput",
    "InvalidInputError",
    "JobFailedError",
    "JobHandle",
    "JobOutcome",
    "JobPage",
    "JobRef",
    "JobResult",
    "JobStatus",
    "LabelScore",
    "ModelResult",
    "NotFoundError",
    "NotTwopassError",
    "Prediction",
    "RateLimitedError",
    "ResponseError",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "TransportError",
    "TwopassError",
    "WaitTimeoutError",
]

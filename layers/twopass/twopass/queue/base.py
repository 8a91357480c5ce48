"""The job message and the two small interfaces a queue backend implements.

:class:`JobPublisher` is what the API needs; :class:`MessageSource` is what the worker needs. SQS
implements both; an in-memory queue implements both for benchmarks with the network out of the loop.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twopass.exceptions import MessageFormatError

__all__ = [
    "HIGH",
    "MESSAGE_VERSION",
    "NORMAL",
    "PRIORITIES",
    "Delivery",
    "JobMessage",
    "JobPublisher",
    "MessageFormatError",
    "MessageSource",
]

MESSAGE_VERSION = 1
#: Job priorities: a high-priority job travels through a queue of its own that the worker reads first.
HIGH = "high"
NORMAL = "normal"
PRIORITIES = (HIGH, NORMAL)


@dataclass(frozen=True)
class JobMessage:
    """What travels through the queue: the job id and the image, inline or as a claim check.

    Plain data: fetching a claim-checked image is :mod:`twopass.payloads`' job.
    """

    job_id: str
    #: The image bytes, when small enough to travel inline.
    image: bytes | None = None
    submitted_at: float = field(default_factory=time.time)
    #: Correlation data carried to the worker's logs (request id, trace id…).
    context: dict[str, str] = field(default_factory=dict)
    #: ``s3://…`` reference of an image too big for a queue message (see :mod:`twopass.payloads`).
    image_ref: str | None = None
    #: Epoch seconds after which the job must not be started (it ends ``expired``); ``None``: no deadline.
    deadline_at: float | None = None
    #: ``"high"`` or ``"normal"``: which queue the job was published to.
    priority: str = NORMAL
    #: The run of the job it was sent for (0, then one more per retry): a dead letter acts on that run only.
    run: int = 0

    def __post_init__(self) -> None:
        if (self.image is None) == (self.image_ref is None):
            raise MessageFormatError("a job message carries exactly one of image and image_ref")
        if self.priority not in PRIORITIES:
            raise MessageFormatError(f"unknown priority {self.priority!r}")

    def past_deadline(self, now: float | None = None) -> bool:
        """Whether the job's deadline has passed (it must then never be started)."""
        return self.deadline_at is not None and self.deadline_at <= (time.time() if now is None else now)

    def encode(self) -> str:
        body: dict[str, Any] = {"v": MESSAGE_VERSION, "job_id": self.job_id}
        if self.image is not None:
            body["image_b64"] = base64.b64encode(self.image).decode("ascii")
        else:
            body["image_ref"] = self.image_ref
        body.update(submitted_at=self.submitted_at, context=self.context)
        # Written only when set, so messages without them read exactly as before.
        if self.deadline_at is not None:
            body["deadline_at"] = self.deadline_at
        if self.priority != NORMAL:
            body["priority"] = self.priority
        if self.run:
            body["run"] = self.run
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, body: str) -> JobMessage:
        try:
            data = json.loads(body)
            if data.get("v") != MESSAGE_VERSION:
                raise MessageFormatError(f"unsupported message version {data.get('v')!r}")
            inline = data.get("image_b64")
            return cls(
                job_id=str(data["job_id"]),
                image=None if inline is None else base64.b64decode(inline, validate=True),
                image_ref=None if data.get("image_ref") is None else str(data["image_ref"]),
                submitted_at=float(data.get("submitted_at") or time.time()),
                context={str(k): str(v) for k, v in (data.get("context") or {}).items()},
                deadline_at=None if data.get("deadline_at") is None else float(data["deadline_at"]),
                priority=str(data.get("priority") or NORMAL),
                run=int(data.get("run") or 0),
            )
        except MessageFormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise MessageFormatError(f"not a twopass job message: {exc}") from exc


@dataclass
class Delivery:
    """One received job message and its receipt. Sources drop what does not decode, so a delivery
    always carries a :class:`JobMessage`.
    """

    message_id: str
    receipt: str
    receive_count: int
    message: JobMessage
    #: When the message's current lease began (``time.monotonic()``): at receipt, then at each extension.
    leased_at: float = field(default_factory=time.monotonic)
    #: The queue it came from (see :meth:`MessageSource.lanes`): acks and leases go back there.
    lane: str = NORMAL

    @property
    def key(self) -> tuple[str, str]:
        """Identifies this delivery among everything a worker holds (receipts are unique per queue only)."""
        return (self.lane, self.receipt)


class JobPublisher(ABC):
    @abstractmethod
    def publish(self, message: JobMessage) -> str:
        """Send ``message``; returns the queue's message id. Raises ``EnqueueError``."""

    def ping(self) -> dict[str, Any]:
        """Cheap reachability check; returns backlog figures when the backend has them."""
        return {}


class MessageSource(ABC):
    """What the worker consumes: at-least-once deliveries that must be acked after the work is durable."""

    #: Receives after which the backend dead-letters a message (``None`` if it never does).
    max_receive_count: int | None = None

    def lanes(self) -> tuple[str, ...]:
        """The queues this source reads, most urgent first (one, unless it combines several)."""
        return (NORMAL,)

    def receive_lane(self, lane: str, max_messages: int, wait_seconds: float) -> list[Delivery]:
        """:meth:`receive` from one of :meth:`lanes` only (the worker long-polls each lane apart)."""
        if lane not in self.lanes():
            raise ValueError(f"no lane {lane!r} in {self.lanes()}")
        return self.receive(max_messages, wait_seconds)

    @abstractmethod
    def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]:
        """Up to ``max_messages`` deliveries, waiting up to ``wait_seconds`` for the first.

        A message that is not a job message is left where it is (it is redelivered after its
        visibility timeout and dead-lettered after ``max_receive_count`` receives, for a person to
        look at) and not returned.
        """

    @abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Delete finished messages; returns those that could not be deleted."""

    @abstractmethod
    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Make unstarted messages visible again at once (graceful shutdown)."""

    @abstractmethod
    def extend(self, deliveries: Sequence[Delivery], seconds: int) -> None:
        """Keep messages invisible for another ``seconds`` (long batches)."""

    def last_attempt(self, delivery: Delivery) -> bool:
        """Whether a failure now sends this message to the dead-letter queue."""
        return self.max_receive_count is not None and delivery.receive_count >= self.max_receive_count

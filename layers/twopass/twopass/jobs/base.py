"""The job lifecycle and the small abstract store every backend implements.

queued → running → succeeded | failed; a queued or running job may also be ``cancelled`` by its
owner, and a queued one ``expired`` when its deadline passed before a worker started it. Every
transition is conditional in the backend: a final state never changes again (only an explicit
:meth:`JobStore.retry` or an operator's redrive reopens one), so duplicate deliveries and racing
workers cannot overwrite a result, and a result that arrives after a cancel is refused.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import re
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from twopass.exceptions import InvalidRequestError, TwopassError

logger = logging.getLogger(__name__)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})
OPEN_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
#: Final states :meth:`JobStore.retry` may send back to ``queued`` (a success is never rerun).
RETRYABLE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED})


class Priority(StrEnum):
    """Which queue a job travels through: ``high`` jobs are taken first, ``normal`` ones still progress."""

    HIGH = "high"
    NORMAL = "normal"


#: Most jobs one page of :meth:`JobStore.list_jobs` holds, and how many it holds by default.
MAX_PAGE = 100
DEFAULT_PAGE = 20


class JobFinalError(TwopassError):
    """The job has already ended, so it can no longer be cancelled."""


class JobNotRetryableError(TwopassError):
    """Only failed, expired and cancelled jobs can be retried; this one is in another state."""


class ImageGoneError(TwopassError):
    """The job's image is no longer retained, so the job cannot be run again."""


class InvalidCursorError(InvalidRequestError):
    """A ``cursor`` that no page of ``list_jobs`` handed out (or one that was altered)."""

    def __init__(self, detail: str = "the cursor is not one a previous page returned") -> None:
        super().__init__("invalid_cursor", detail)


#: The owner of jobs created while the API checks no keys.
ANONYMOUS = "anonymous"

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def new_batch_id() -> str:
    """A batch id: like a job id, 32 hex characters of a random UUID4."""
    return uuid.uuid4().hex


def new_job_id() -> str:
    """A random UUID4 as 32 hex characters: 122 random bits, unguessable and collision-free."""
    return uuid.uuid4().hex


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.match(value))


@dataclass
class JobRecord:
    """One job as stored; ``fast`` and ``result`` are ``{"model", "label", "top_k"}`` dicts."""

    job_id: str
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    updated_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    fast: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    expires_at: int | None = None
    worker: str | None = None
    #: Who created the job (an API key's id, hashed locally); only they can read it.
    owner: str = ANONYMOUS
    #: ``s3://…`` of the claim-checked image while it is retained (lets a lost message be republished).
    image_ref: str | None = None
    #: What the queue message carries besides the image (request id, callback URL), kept so a job
    #: whose message was lost can be republished whole.
    context: dict[str, str] | None = None
    #: Epoch seconds after which a job not yet started is never run (``None``: no deadline).
    deadline_at: float | None = None
    #: ``high`` or ``normal``: the queue the job travels through.
    priority: str = Priority.NORMAL.value
    #: Earlier outcomes of a retried job, oldest first: ``{"status", "error", "attempts", "finished_at",
    #: "retried_at"}`` each.
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The batch (``POST /batches``) the job was submitted in, if any.
    batch_id: str | None = None
    #: The outbox: set (a token) in the very write of a final state whose completion event nobody
    #: else owes, cleared once the event is published (see :meth:`JobStore.settle_event`).
    event_owed: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def run(self) -> int:
        """Which run of the job this is: 0 for the first, one more for each retry by its owner.

        Queue messages carry the run they were sent for, so a dead-lettered message of an earlier
        run never acts on the job's current one.
        """
        return len(self.history)

    def expired(self, now: float | None = None) -> bool:
        # DynamoDB deletes expired items up to days late (and moto never does): reads must check.
        return self.expires_at is not None and self.expires_at <= (time.time() if now is None else now)

    def past_deadline(self, now: float | None = None) -> bool:
        """Whether the job's deadline has passed (a queued job is then never started)."""
        return self.deadline_at is not None and self.deadline_at <= (time.time() if now is None else now)

    def outcome(self, retried_at: float) -> dict[str, Any]:
        """This (final) run's outcome as a :attr:`history` entry, when the job is retried."""
        entry: dict[str, Any] = {"status": self.status.value, "attempts": self.attempts, "retried_at": retried_at}
        if self.error is not None:
            entry["error"] = self.error
        if self.finished_at is not None:
            entry["finished_at"] = self.finished_at
        return entry


#: Most items one batch holds (``POST /batches``), and so most jobs one ``get_many`` call reads.
MAX_BATCH_ITEMS = 100


@dataclass
class BatchRecord:
    """One ``POST /batches`` call: who made it and, in input order, each item's job id or its error.

    ``items`` holds ``{"index", "job_id"}`` for an item that became a job and ``{"index", "error",
    "detail"}`` for one that was refused; the jobs themselves are read back with :meth:`JobStore.get_many`.
    """

    batch_id: str
    owner: str = ANONYMOUS
    items: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    expires_at: int | None = None

    @property
    def job_ids(self) -> list[str]:
        return [str(item["job_id"]) for item in self.items if item.get("job_id")]

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (time.time() if now is None else now)


#: Called with a job's record each time a final state of it is written (see :meth:`JobStore.on_final`).
FinalListener = Callable[[JobRecord], None]
#: Told which of the asked jobs' announcements were delivered (see :meth:`JobStore.when_announced`).
Delivered = Callable[[set[str]], None]


@runtime_checkable
class DeliveryTracker(Protocol):
    """A final-state listener that delivers later (the completion-event publisher) and says when."""

    def __call__(self, record: JobRecord) -> None: ...

    def when_delivered(self, job_ids: Sequence[str], then: Delivered) -> None:
        """Call ``then`` once the latest announcement of each of ``job_ids`` has been dealt with, with
        those that were delivered (the others failed, or were never announced to this listener)."""


@dataclass(frozen=True)
class IdempotencyRecord:
    """What an ``Idempotency-Key`` maps to: its job, the body it was used with, the answer given."""

    key_hash: str
    job_id: str
    body_hash: str
    response: dict[str, Any] | None = None
    #: When the key is forgotten (epoch seconds); defaults to the job's own expiry.
    expires_at: int | None = None


@dataclass(frozen=True)
class WorkerBeat:
    """A worker's latest heartbeat."""

    worker_id: str
    at: float
    info: dict[str, Any] = field(default_factory=dict)

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.at


@dataclass(frozen=True)
class Start:
    """A start folded into the job's final write, instead of a write of its own.

    The worker marks a short batch's jobs running only in their final write: ``attempts`` + 1,
    ``started_at`` = ``at`` (when the batch was taken), ``worker`` = ``worker_id``, under the same
    condition as :meth:`JobStore.start` (a queued job past its deadline at ``at`` is refused). One
    write per job instead of two; the conditional final write keeps every other guarantee.
    """

    worker_id: str
    at: float


class JobStore(ABC):
    """Where job records live. Transitions return ``False`` when the job's state forbids them.

    Every final state, whoever writes it (the worker, a cancel in the API, an expiry, the dead-letter
    sweep, the reconciler), is written through this interface; listeners registered with
    :meth:`on_final` hear of each write that landed, with the record as written. While a listener
    delivers later (the completion-event publisher), a final write also records its event as owed
    (``event_owed``), in the same write, unless its writer holds the job's queue message
    (:meth:`message_held`); :meth:`settle_event` clears it and :meth:`owed_events` finds what is left.
    """

    def on_final(self, listener: FinalListener) -> None:
        """Call ``listener`` with the job's record after each final state written (never for a refused write).

        Listeners must not block or raise: a listener's error is logged, never the writer's.
        """
        self.__dict__.setdefault("_final_listeners", []).append(listener)

    def _announce(self, record: JobRecord) -> None:
        """Tell the listeners that ``record`` was just written final (backends call this)."""
        for listener in self.__dict__.get("_final_listeners", ()):
            try:
                listener(record)
            except Exception:
                logger.exception("final-state listener failed for job %s", record.job_id)

    def reannounce(self, record: JobRecord) -> None:
        """Tell the listeners again of a final state written earlier, whose announcement may have died
        with its writer (a redelivery met the job final; the reconciler found its event still owed)."""
        if record.final:
            self._announce(record)

    # -- the outbox: completion events owed durably ------------------------------------------------

    def _trackers(self) -> list[DeliveryTracker]:
        return [x for x in self.__dict__.get("_final_listeners", ()) if isinstance(x, DeliveryTracker)]

    @contextlib.contextmanager
    def message_held(self) -> Iterator[None]:
        """Final writes made in this block (this thread) owe no event on the job record: their writer
        holds the job's queue message and deletes it only once the event is delivered, so a crash
        brings the message, and with it the event, back (see :meth:`when_announced`)."""
        held = self.__dict__.setdefault("_message_held", threading.local())
        before = getattr(held, "on", False)
        held.on = True
        try:
            yield
        finally:
            held.on = before

    def _outbox_token(self) -> str | None:
        """The token a final write records in ``event_owed``, or ``None`` when it owes nothing on the
        record: no listener delivers later (events are off), or the writer holds the job's message."""
        held = self.__dict__.get("_message_held")
        if (held is not None and getattr(held, "on", False)) or not self._trackers():
            return None
        return uuid.uuid4().hex

    def when_announced(self, job_ids: Sequence[str], then: Delivered) -> None:
        """Call ``then`` (maybe on another thread) with those of ``job_ids`` whose latest final-state
        announcement every delivering listener has delivered; at once, with all, when none delivers later."""
        trackers = self._trackers()
        if not trackers:
            then(set(job_ids))
            return
        # Delivered means delivered by every tracker: intersect their answers as they come.
        lock, answers = threading.Lock(), [set(job_ids)]
        left = [len(trackers)]

        def one(delivered: set[str]) -> None:
            with lock:
                answers[0] &= delivered
                left[0] -= 1
                if left[0]:
                    return
            then(answers[0])

        for tracker in trackers:
            tracker.when_delivered(job_ids, one)

    def owed_events(self, updated_before: float, limit: int = 100) -> list[JobRecord]:
        """Final jobs whose event is still owed (``event_owed`` set), last written before ``updated_before``."""
        return []

    def settle_event(self, job_id: str, token: str) -> bool:
        """Clear the job's ``event_owed`` if it is still ``token`` (its event was published); ``False`` if not."""
        return False

    @abstractmethod
    def create_batch(self, batch: BatchRecord) -> None:
        """Insert a batch record (its jobs are created on their own, before it)."""

    @abstractmethod
    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch record, or ``None`` when unknown or expired."""

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        """The records of ``job_ids`` that exist (and have not expired), by job id.

        This default reads one at a time; backends override it with a batched read.
        """
        found = {}
        for job_id in job_ids:
            record = self.get(job_id)
            if record is not None:
                found[job_id] = record
        return found

    @abstractmethod
    def create(self, record: JobRecord, idempotency: IdempotencyRecord | None = None) -> None:
        """Insert a new record (and its idempotency key, atomically).

        Idempotent against its own retries: a retried write that had in fact succeeded is success.
        Raises :class:`~twopass.exceptions.IdempotencyConflictError` when the key is already taken.
        """

    @abstractmethod
    def idempotency(self, key_hash: str) -> IdempotencyRecord | None:
        """The live record of an idempotency key, if any."""

    @abstractmethod
    def remember_response(self, key_hash: str, response: dict[str, Any]) -> None:
        """Store the answer given for an idempotency key, to replay it."""

    @abstractmethod
    def forget_idempotency(self, key_hash: str) -> None:
        """Release a key whose job could not be enqueued, so the client may retry with it."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The record, or ``None`` when unknown or expired."""

    @abstractmethod
    def start(self, job_id: str, worker_id: str) -> JobRecord | None:
        """queued|running → running, attempts + 1. ``None`` when the job is final or unknown, and when
        it is still queued past its ``deadline_at`` (the caller then calls :meth:`expire`)."""

    @abstractmethod
    def succeed(self, job_id: str, result: dict[str, Any], *, start: Start | None = None) -> bool:
        """queued|running → succeeded with ``result``; ``False`` if it was already final.

        With ``start``, the same write also records what :meth:`start` would have (see :class:`Start`).
        """

    @abstractmethod
    def fail(
        self,
        job_id: str,
        error: str,
        *,
        only_if_queued: bool = False,
        start: Start | None = None,
        run: int | None = None,
    ) -> bool:
        """queued|running (or only queued) → failed with ``error``; ``False`` if not allowed.

        With ``run``, only while the job is in that run (:attr:`JobRecord.run`): what a message of an
        earlier run reports (a dead letter) never touches the run its owner retried.
        """

    @abstractmethod
    def reopen(self, job_id: str) -> bool:
        """failed → queued, for a redrive after a fix; succeeded jobs are never reopened."""

    @abstractmethod
    def cancel(self, job_id: str) -> bool:
        """queued|running → cancelled; ``False`` when the job is final or unknown.

        A worker's later :meth:`succeed` is then refused, which is how a cancelled job's result is dropped.
        """

    @abstractmethod
    def expire(self, job_id: str, reason: str) -> bool:
        """queued → expired with ``reason`` as its error; ``False`` when the job is not queued."""

    @abstractmethod
    def keep_image(self, job_id: str, ref: str) -> bool:
        """Record ``ref`` (``s3://…``) as the job's kept image, so it can be retried; only for a job that
        has none yet and did not succeed. ``False`` when refused."""

    @abstractmethod
    def retry(self, job_id: str) -> bool:
        """failed|expired|cancelled → queued under the same id; ``False`` from any other state.

        ``attempts`` carries on; the ended run's outcome is appended to ``history``; the error, the
        finish time and the deadline are cleared (a retry is asked for now, so an old deadline would
        only expire it again).
        """

    @abstractmethod
    def list_jobs(
        self, owner: str, *, status: JobStatus | None = None, limit: int = DEFAULT_PAGE, cursor: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """``owner``'s jobs, newest first, at most ``limit`` (1-100), only ``status`` ones if given.

        Returns the page and the cursor of the next one (``None`` at the end). ``cursor`` is what a
        previous page returned; anything else raises :class:`InvalidCursorError`.
        """

    @abstractmethod
    def never_started(self, created_before: float, limit: int = 100) -> list[JobRecord]:
        """Jobs still ``queued`` that no worker ever started, created before ``created_before``, oldest first."""

    @abstractmethod
    def beat(self, worker_id: str, info: dict[str, Any]) -> None:
        """Record that ``worker_id`` is alive now."""

    @abstractmethod
    def forget_worker(self, worker_id: str) -> None:
        """Remove a worker's heartbeat (clean shutdown)."""

    @abstractmethod
    def workers(self) -> list[WorkerBeat]:
        """Latest heartbeat of every worker that has not shut down cleanly."""

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`~twopass.exceptions.DependencyError` if the store is unreachable."""


def check_page_size(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequestError("invalid_limit", f"limit must be 1 to {MAX_PAGE}, got {limit}")
    return limit


#: A cursor's creation time: at most this many characters ("1796000000.123456789" is 20)…
MAX_CURSOR_TIME_CHARS = 32
#: …and at most this far ahead of this host's clock.
CURSOR_CLOCK_SKEW_SECONDS = 86_400.0


def encode_cursor(created_at: str, job_id: str) -> str:
    """The opaque cursor after the job created at ``created_at`` (a decimal string, as stored) with ``job_id``.

    Base64 of a small JSON object: opaque to clients (they pass it back unchanged), yet free of any
    owner or table detail, so a cursor shown to another tenant tells it nothing. The API hands it out
    signed for its caller and listing (:mod:`twopass.api.cursors`), so it never takes back another.
    """
    raw = json.dumps({"t": created_at, "j": job_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """``(created_at, job_id)`` of a cursor from :func:`encode_cursor`; :class:`InvalidCursorError` otherwise."""
    if not cursor or len(cursor) > 200:
        raise InvalidCursorError()
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        created_at, job_id = data["t"], data["j"]
        if not isinstance(created_at, str) or not isinstance(job_id, str) or set(data) != {"t", "j"}:
            raise ValueError("unexpected fields")
        number = Decimal(created_at)
    except (ValueError, TypeError, KeyError, binascii.Error, InvalidOperation):
        raise InvalidCursorError() from None
    # A creation time a job can have: not before 1970, not beyond a day from now (clock skew between
    # hosts), and short; "1e200" decodes to a finite number, yet no page ever handed it out.
    if (
        len(created_at) > MAX_CURSOR_TIME_CHARS
        or not number.is_finite()
        or not 0 <= number <= Decimal(time.time() + CURSOR_CLOCK_SKEW_SECONDS)
        or not is_job_id(job_id)
    ):
        raise InvalidCursorError()
    return created_at, job_id

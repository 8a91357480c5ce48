"""Typed results: frozen dataclasses built from the server's JSON.

Plain dataclasses rather than pydantic so that the client needs nothing but httpx. Every result
keeps the body it was built from in ``raw`` (left out of ``repr`` and ``==``) so fields the server
adds later are still reachable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from twopass.client.exceptions import ResponseError

__all__ = [
    "Health",
    "JobHandle",
    "JobOutcome",
    "JobPage",
    "JobResult",
    "JobStatus",
    "LabelScore",
    "ModelResult",
    "Prediction",
]


class JobStatus(StrEnum):
    """A job's lifecycle: queued → running → succeeded | failed, or cancelled (by its owner) or expired
    (not started by its deadline). ``shed`` is a prediction's only: the service was overloaded, so the
    slow pass was skipped and there is no job.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    SHED = "shed"

    @property
    def done(self) -> bool:
        """Nothing more will happen: the job ended (or, for ``shed``, never existed)."""
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class LabelScore:
    """One of a model's top-k labels."""

    label: str
    probability: float
    class_id: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> LabelScore:
        return cls(label=str(body["label"]), probability=float(body["probability"]), class_id=int(body["class_id"]))


@dataclass(frozen=True, slots=True)
class ModelResult:
    """One model's answer for one image."""

    model: str
    label: str
    top_k: tuple[LabelScore, ...]
    inference_ms: float | None = None
    batch_size: int | None = None
    queue_wait_ms: float | None = None

    @property
    def probability(self) -> float | None:
        """Probability of ``label`` (the first of ``top_k``), if the server sent top-k."""
        return self.top_k[0].probability if self.top_k else None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ModelResult:
        return cls(
            model=str(body["model"]),
            label=str(body["label"]),
            top_k=tuple(LabelScore.from_json(item) for item in _sequence(body.get("top_k") or ())),
            inference_ms=_opt_float(body.get("inference_ms")),
            batch_size=_opt_int(body.get("batch_size")),
            queue_wait_ms=_opt_float(body.get("queue_wait_ms")),
        )


@dataclass(frozen=True, slots=True)
class JobHandle:
    """A queued job: pass it (or its ``job_id``) to ``job`` or ``wait``."""

    job_id: str

    def __str__(self) -> str:
        return self.job_id


@dataclass(frozen=True, slots=True)
class Prediction:
    """``POST /predict``: the fast model's answer and the handle of the slow model's job.

    ``job`` is None when the service shed the slow pass (``status`` is ``shed``): the fast answer is
    all there is.
    """

    job: JobHandle | None
    status: JobStatus
    fast: ModelResult
    status_url: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def job_id(self) -> str | None:
        return self.job.job_id if self.job is not None else None

    @property
    def shed(self) -> bool:
        """The service was over its backlog limit: no slow job was queued."""
        return self.status is JobStatus.SHED

    @property
    def label(self) -> str:
        """The fast model's label."""
        return self.fast.label

    @property
    def probability(self) -> float | None:
        return self.fast.probability

    @property
    def top_k(self) -> tuple[LabelScore, ...]:
        return self.fast.top_k

    @classmethod
    def from_json(cls, body: Any) -> Prediction:
        def build(b: Mapping[str, Any]) -> Prediction:
            job_id = b["job_id"]
            return cls(
                job=JobHandle(str(job_id)) if job_id is not None else None,
                status=JobStatus(b["status"]),
                fast=ModelResult.from_json(b["fast"]),
                status_url=_opt_str(b.get("status_url")),
                raw=b,
            )

        return _parse("POST /predict", body, build)


@dataclass(frozen=True, slots=True)
class BatchItemError:
    """An image of ``predict_many`` that did not become a job: why, as the server's item error says it
    (``code`` ``invalid_image``, ``payload_too_large``, ``upload_not_found``…), or as the client found it
    before sending (``invalid_input``: the image could not be read; ``payload_too_large``: too big for a
    batch on a server that takes no uploads). ``index`` is its place in the images given."""

    index: int
    code: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


def batch_items_from_json(body: Any, count: int) -> list[Prediction | BatchItemError]:
    """``POST /batches``: one :class:`Prediction` or :class:`BatchItemError` per item sent, in order
    (``index`` as the server numbered the ``count`` items: the caller adds its offset)."""

    def build(b: Mapping[str, Any]) -> list[Prediction | BatchItemError]:
        items = _sequence(b["items"], "items")
        if len(items) != count or [int(item["index"]) for item in items] != list(range(count)):
            raise ValueError(f"expected items 0 to {count - 1} in order, got {len(items)} items")
        return [
            BatchItemError(int(item["index"]), str(item["error"]), str(item.get("detail") or ""))
            if "error" in item
            else Prediction.from_json(item)
            for item in items
        ]

    return _parse("POST /batches", body, build)


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How one run of a retried job ended."""

    status: JobStatus
    attempts: int
    retried_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> JobOutcome:
        return cls(
            status=JobStatus(body["status"]),
            attempts=int(body.get("attempts") or 0),
            retried_at=_opt_time(body.get("retried_at")),
            finished_at=_opt_time(body.get("finished_at")),
            error=_opt_str(body.get("error")),
        )


@dataclass(frozen=True, slots=True)
class JobResult:
    """``GET /job/{id}``: the job's lifecycle and, once it succeeded, the slow model's answer."""

    job_id: str
    status: JobStatus
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    slow: ModelResult | None = None
    error: str | None = None
    #: ``high`` or ``normal``: the queue the job travels through.
    priority: str = "normal"
    #: When a job not yet started stops being worth running; None: no deadline.
    deadline_at: datetime | None = None
    #: For a retried job, how each earlier run ended, oldest first.
    history: tuple[JobOutcome, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """True once the job ended: succeeded, failed, cancelled or expired (only a retry reopens one)."""
        return self.status.done

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED

    @property
    def failed(self) -> bool:
        return self.status is JobStatus.FAILED

    @property
    def cancelled(self) -> bool:
        return self.status is JobStatus.CANCELLED

    @property
    def expired(self) -> bool:
        return self.status is JobStatus.EXPIRED

    @property
    def label(self) -> str | None:
        """The slow model's label, or None until the job succeeded."""
        return self.slow.label if self.slow is not None else None

    @property
    def probability(self) -> float | None:
        return self.slow.probability if self.slow is not None else None

    @property
    def top_k(self) -> tuple[LabelScore, ...]:
        return self.slow.top_k if self.slow is not None else ()

    @classmethod
    def from_json(cls, body: Any) -> JobResult:
        def build(b: Mapping[str, Any]) -> JobResult:
            slow = b.get("slow")
            return cls(
                job_id=str(b["job_id"]),
                status=JobStatus(b["status"]),
                created_at=_opt_time(b.get("created_at")),
                updated_at=_opt_time(b.get("updated_at")),
                started_at=_opt_time(b.get("started_at")),
                finished_at=_opt_time(b.get("finished_at")),
                attempts=int(b.get("attempts") or 0),
                slow=ModelResult.from_json(slow) if slow else None,
                error=_opt_str(b.get("error")),
                priority=str(b.get("priority") or "normal"),
                deadline_at=_opt_time(b.get("deadline_at")),
                history=tuple(JobOutcome.from_json(h) for h in _sequence(b.get("history") or (), "history")),
                raw=b,
            )

        return _parse("GET /job", body, build)


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of ``GET /jobs``: the caller's jobs, newest first; iterate it for its jobs."""

    jobs: tuple[JobResult, ...]
    #: Where the next page starts (pass it as ``cursor``); None on the last page.
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[JobResult]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    @classmethod
    def from_json(cls, body: Any) -> JobPage:
        def build(b: Mapping[str, Any]) -> JobPage:
            jobs = tuple(JobResult.from_json(item) for item in _sequence(b["jobs"], "jobs"))
            return cls(jobs=jobs, next_cursor=_opt_str(b.get("next_cursor")))

        return _parse("GET /jobs", body, build)


@dataclass(frozen=True, slots=True)
class Health:
    """``GET /health`` (just ``status``) or ``GET /health/all`` (``status`` and every backend)."""

    status: str
    backends: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json(cls, body: Any) -> Health:
        def build(b: Mapping[str, Any]) -> Health:
            # /health says {"health": "ok"}; /health/all says {"status": "ok"|"degraded", "backends": …}.
            status = b.get("status", b.get("health"))
            if not isinstance(status, str):
                raise KeyError("status")
            return cls(status=status, backends=dict(b.get("backends") or {}), raw=b)

        return _parse("GET /health", body, build)


def metadata_from_json(body: Any) -> dict[str, Any]:
    """``GET /metadata``: a JSON object, handed over as a plain dict."""
    return _parse("GET /metadata", body, dict)


def _parse[T](what: str, body: Any, build: Callable[[Mapping[str, Any]], T]) -> T:
    """Run ``build(body)``, turning a body that does not follow the contract into ResponseError."""
    if not isinstance(body, Mapping):
        raise ResponseError(f"{what}: expected a JSON object, got {type(body).__name__}")
    try:
        return build(body)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResponseError(f"{what}: unexpected response body ({type(exc).__name__}: {exc})") from exc


def _sequence(value: Any, name: str = "top_k") -> Sequence[Mapping[str, Any]]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"{name} is {type(value).__name__}, not a list")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_time(value: Any) -> datetime | None:
    # The server writes ISO 8601 with a trailing Z, which fromisoformat reads since Python 3.11.
    return None if value is None else datetime.fromisoformat(str(value))

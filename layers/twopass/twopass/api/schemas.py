"""Request and response models: the HTTP contract, kept compatible with the sync-async seed.

The seed's shapes stay as they were (``{"job_id", "<fast model>": "<label>"}`` from ``/predict``,
``{"<job_id>": {"prediction": "<label>"}}`` from ``/job/{id}``); every richer field sits beside them.
Routes build these models and FastAPI serialises them through ``response_model``, so what the
OpenAPI schema says is what clients get.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from twopass.cascade import SlowModeName
from twopass.jobs.base import MAX_BATCH_ITEMS, JobRecord, JobStatus

JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
PriorityName = Literal["high", "normal"]


def iso(ts: float | None) -> str | None:
    """Epoch seconds → ISO 8601 UTC with milliseconds (``…Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SeedShaped(BaseModel):
    """A response whose extra keys (the seed's ``"<name>": ...``) keep their place in the JSON: after
    the fields named in ``_before_extras``, before the rest, as the seed's clients print them."""

    _before_extras: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _seed_order(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        head = {k: data.pop(k) for k in self._before_extras if k in data}
        extras = {k: data.pop(k) for k in (self.__pydantic_extra__ or {}) if k in data}
        return {**head, **extras, **data}


class PredictRequest(BaseModel):
    """JSON body of ``POST /predict`` (a raw ``image/*`` body is accepted too)."""

    model_config = ConfigDict(extra="forbid")

    image_data: str | None = Field(
        default=None,
        description="The image file (JPEG, PNG, WebP, GIF, BMP or TIFF), base64-encoded. Exactly one of "
        "image_data and upload_id.",
    )
    upload_id: str | None = Field(
        default=None,
        description="An upload from POST /uploads whose image was PUT: the API reads it from the bucket and the job "
        "refers to it. The same upload_id again answers with the same job. Exactly one of image_data and upload_id.",
    )
    callback_url: str | None = Field(
        default=None,
        description="https URL that receives a signed POST when the slow result is final "
        "(for raw image bodies, pass it as the callback_url query parameter).",
    )
    slow: SlowModeName | None = Field(
        default=None,
        description="auto (default): queue the slow model unless the fast model's confidence reaches the "
        "cascade threshold; always: queue it whatever the fast model says (and bypass the result cache); "
        "never: the fast answer only, no job (for raw image bodies, pass it as the slow query parameter).",
    )
    deadline_seconds: float | None = Field(
        default=None,
        # Strict: a JSON number only (true or "30" would otherwise pass as 1.0 and 30.0).
        strict=True,
        description="Seconds (1 to the queue's retention) within which a worker must start the slow job; a job "
        "not started by then is never run and ends expired. Default: the service's (none unless configured). "
        "For raw image bodies, pass it as the deadline_seconds query parameter.",
    )
    priority: PriorityName | None = Field(
        default=None,
        description="high: the job goes to the high-priority queue, which workers take first; normal (default). "
        "Where the service has no high-priority queue the job is queued normally and its body says so. "
        "For raw image bodies, pass it as the priority query parameter.",
    )
    on_overload: Literal["shed", "reject"] | None = Field(
        default=None,
        description="When the backlog is over the service's limit: shed (default) answers with the fast model "
        'alone ("job_id": null, "status": "shed"); reject answers 429 with Retry-After instead, for clients '
        "that want the slow answer only. For raw image bodies, pass it as the on_overload query parameter.",
    )

    @model_validator(mode="after")
    def _one_image(self) -> PredictRequest:
        if (self.image_data is None) == (self.upload_id is None):
            raise ValueError("send exactly one of image_data and upload_id")
        return self


UploadContentType = Literal["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"]


class UploadRequest(BaseModel):
    """JSON body of ``POST /uploads``."""

    model_config = ConfigDict(extra="forbid")

    content_type: UploadContentType = Field(
        description="The image's type: the PUT must send it as its Content-Type (the URL is signed for it)."
    )
    content_length: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        description="The image's size in bytes, if known: over max_bytes is refused at once (413), and the URL is "
        "signed for exactly this Content-Length.",
    )


class UploadPost(BaseModel):
    """A presigned POST: a ``multipart/form-data`` body of ``fields`` (as given), then the image as ``file``."""

    url: str = Field(description="Where to POST the form.")
    fields: dict[str, str] = Field(description="Form fields to send first, as given (the policy signs them).")


class UploadResponse(BaseModel):
    """``POST /uploads``: where and how to PUT the image, then ``POST /predict {"upload_id": ...}``."""

    upload_id: str = Field(description="Names the upload in POST /predict (32 hexadecimal characters).")
    url: str = Field(description="The presigned URL to PUT the image file to (the raw bytes, no encoding).")
    method: Literal["PUT"] = Field(description="Always PUT.")
    headers: dict[str, str] = Field(description="Headers the PUT must send as given (the URL is signed for them).")
    expires_at: str = Field(description="When the URL stops working (ISO 8601 UTC); an upload not PUT by then is gone.")
    max_bytes: int = Field(description="Largest image an upload takes; a bigger one is refused by POST /predict (413).")
    post: UploadPost | None = Field(
        default=None, description="The same upload as a presigned POST, whose size S3 itself caps at max_bytes."
    )


class LabelScore(BaseModel):
    label: str = Field(description="ImageNet class name.")
    probability: float = Field(description="Softmax probability, 0-1.")
    class_id: int = Field(description="ImageNet class index, 0-999.")


class ModelResult(BaseModel):
    """One model's answer for one image."""

    model: str = Field(description="Name of the model that answered (its card's name).")
    label: str = Field(description="Top-1 label.")
    top_k: list[LabelScore] = Field(description="The best classes, most probable first.")
    inference_ms: float | None = Field(default=None, description="Time on the model (for the slow model: the batch).")
    batch_size: int | None = Field(default=None, description="Slow model only: images in the batch this one ran in.")
    queue_wait_ms: float | None = Field(
        default=None, description="Slow model only: time from submission to the start of its batch."
    )


_FAST_KEY = "efficientnet-lite0"

#: Which model's answer a job holds.
AnsweredBy = Literal["fast", "slow"]


class PredictResponse(SeedShaped):
    """``{"job_id", "<fast model name>": "<label>"}`` plus the fast top-k and the job's status."""

    _before_extras: ClassVar[tuple[str, ...]] = ("job_id",)

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "description": "Besides the fields below, one key named after the fast model holds its top-1 label "
            f'(the seed\'s shape), e.g. "{_FAST_KEY}": "tiger cat".',
            "additionalProperties": {"type": "string", "description": "<fast model name>: its top-1 label"},
        },
    )

    job_id: str | None = Field(
        description="Id of the slow job (32 hex characters); read it at status_url. null when shed (no job)."
    )
    status: JobStatusName | Literal["shed"] = Field(
        description="The job's status when answered: queued; succeeded when it was answered at once (the "
        "cascade found the fast answer confident enough, or the result cache held the slow answer); shed when "
        "the service was over its backlog limit, so the slow pass was skipped and no job exists."
    )
    fast: ModelResult = Field(description="The fast model's answer, given at once.")
    status_url: str | None = Field(default=None, description="Where the slow result will be: /job/{job_id}.")
    answered_by: AnsweredBy | None = Field(
        default=None,
        description="Only when the job was answered at once: fast (the cascade) or slow (the result cache).",
    )
    cached: bool | None = Field(
        default=None, description="Only on a result-cache hit: true; the slow answer is in slow."
    )
    slow: ModelResult | None = Field(default=None, description="Only on a result-cache hit: the slow model's answer.")

    @classmethod
    def build(
        cls,
        job_id: str,
        fast: dict[str, Any],
        *,
        final: dict[str, Any] | None = None,
    ) -> PredictResponse:
        """The answer for a queued job, or (``final``: the job's result) for one answered at once."""
        body: dict[str, Any] = {
            "job_id": job_id,
            fast["model"]: fast["label"],
            "status": JobStatus.QUEUED.value,
            "fast": fast,
            "status_url": f"/job/{job_id}",
        }
        if final is not None:
            body["status"] = JobStatus.SUCCEEDED.value
            body["answered_by"] = final.get("answered_by", "slow")
            if final.get("cached"):
                body.update(cached=True, slow=final)
        return cls.model_validate(body)

    @classmethod
    def fast_only(cls, fast: dict[str, Any]) -> PredictResponse:
        """``slow: never``: the fast model's answer, final, with no job behind it."""
        return cls.model_validate(
            {"job_id": None, fast["model"]: fast["label"], "status": "succeeded", "fast": fast, "answered_by": "fast"}
        )

    @classmethod
    def shed(cls, fast: dict[str, Any]) -> PredictResponse:
        """The answer when the backlog is over its limit: the fast model's, with no job behind it."""
        return cls.model_validate({"job_id": None, fast["model"]: fast["label"], "status": "shed", "fast": fast})


class JobOutcome(BaseModel):
    """How one run of a job ended, before it was retried."""

    status: JobStatusName = Field(description="failed, expired or cancelled.")
    error: str | None = Field(default=None, description="Why, when it failed or expired.")
    attempts: int = Field(description="Deliveries to a worker up to then.")
    finished_at: str | None = Field(default=None, description="When that run ended (ISO 8601, UTC).")
    retried_at: str = Field(description="When the job was queued again (ISO 8601, UTC).")

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> JobOutcome:
        return cls(
            status=entry["status"],
            error=entry.get("error"),
            attempts=int(entry.get("attempts", 0)),
            finished_at=iso(entry.get("finished_at")),
            retried_at=iso(entry["retried_at"]) or "",
        )


class JobResponse(SeedShaped):
    """``{"<job_id>": {"prediction": "<label>" | null}}`` plus the job's lifecycle and slow top-k."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "description": 'Besides the fields below, one key named after the job id holds {"prediction": '
            "<slow top-1 label or null>} (the seed's shape).",
            "additionalProperties": {
                "type": "object",
                "properties": {"prediction": {"type": ["string", "null"]}},
                "description": "<job_id>: the slow top-1 label once succeeded, else null",
            },
        },
    )

    job_id: str = Field(description="The job's id.")
    status: JobStatusName = Field(
        description="queued → running → succeeded | failed; cancelled (by its owner, from queued or running); "
        "expired (not started by its deadline)."
    )
    created_at: str = Field(description="When the job was accepted (ISO 8601, UTC).")
    updated_at: str | None = Field(default=None, description="Last status change.")
    started_at: str | None = Field(default=None, description="When a worker last started it.")
    finished_at: str | None = Field(default=None, description="When it reached its final status.")
    attempts: int = Field(default=0, description="Deliveries to a worker so far.")
    slow: ModelResult | None = Field(
        default=None,
        description="The answer once succeeded: the slow model's, or the fast model's when answered_by is fast.",
    )
    error: str | None = Field(default=None, description="Why the job failed or expired, when it did.")
    answered_by: AnsweredBy | None = Field(
        default=None,
        description="Which model answered, once succeeded: fast (the cascade was confident enough; no slow pass "
        "ran) or slow.",
    )
    model_version: str | None = Field(
        default=None,
        description="Version (model card) of the model that answered, once succeeded: during a canary rollout, "
        "the candidate's for the jobs it served.",
    )
    agreement: bool | None = Field(
        default=None,
        description="Whether the slow model's top-1 class is the fast model's; null when no slow model answered "
        "or the fast answer was not known to the worker.",
    )
    cached: bool = Field(
        default=False, description="true when the answer came from the result cache (the same image seen before)."
    )
    priority: PriorityName = Field(
        default="normal", description="The queue the job travels through: high (taken first) or normal."
    )
    deadline_at: str | None = Field(
        default=None, description="When a job not yet started stops being worth running (ISO 8601, UTC); null: none."
    )
    history: list[JobOutcome] | None = Field(
        default=None, description="Only for a retried job: how each earlier run ended, oldest first."
    )

    @classmethod
    def from_record(cls, record: JobRecord) -> JobResponse:
        succeeded = record.status is JobStatus.SUCCEEDED
        label = record.result.get("label") if record.result and succeeded else None
        result = record.result if succeeded and record.result else {}
        return cls.model_validate(
            {
                record.job_id: {"prediction": label},
                "job_id": record.job_id,
                "status": record.status.value,
                "created_at": iso(record.created_at),
                "updated_at": iso(record.updated_at),
                "started_at": iso(record.started_at),
                "finished_at": iso(record.finished_at),
                "attempts": record.attempts,
                "slow": record.result if succeeded else None,
                "error": record.error,
                # Results written before the cascade existed carry no answered_by: the slow model's.
                "answered_by": result.get("answered_by", "slow") if result else None,
                "model_version": result.get("version"),
                "agreement": result.get("agreement"),
                "cached": bool(result.get("cached", False)),
                "priority": record.priority,
                "deadline_at": iso(record.deadline_at),
                **({"history": [JobOutcome.from_entry(h) for h in record.history]} if record.history else {}),
            }
        )


class JobListResponse(BaseModel):
    """``GET /jobs``: a page of the caller's jobs, newest first."""

    jobs: list[JobResponse] = Field(description="Job bodies as GET /job/{job_id} gives them, newest first.")
    next_cursor: str | None = Field(
        description="Pass it as cursor to get the next page; null on the last page. Opaque: use it as it is."
    )


class BatchRequest(BaseModel):
    """JSON body of ``POST /batches``."""

    model_config = ConfigDict(extra="forbid")

    items: list[Any] = Field(
        description=f'1 to {MAX_BATCH_ITEMS} items, each {{"image_data": "<base64>"}} or {{"upload_id": "<id>"}}; '
        "a bad item is answered with its own error and never fails the others. The whole body is within the "
        "API's body limit (as one POST /predict's)."
    )
    slow: SlowModeName | None = Field(default=None, description="As on POST /predict, for every item.")
    deadline_seconds: float | None = Field(default=None, strict=True, description="As on POST /predict, every job.")
    priority: PriorityName | None = Field(default=None, description="As on POST /predict, for every job.")
    on_overload: Literal["shed", "reject"] | None = Field(
        default=None, description="As on POST /predict: shed answers every item with the fast model alone."
    )


class BatchItemError(BaseModel):
    """An item that never became a job: its place in the request and why."""

    # Forbid: an item is either this or a job's body, never both (the union below tells them apart).
    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="The item's place in the request's items, from 0.")
    error: str = Field(description="Stable error code, as POST /predict gives it for the same image (or job_gone).")
    detail: str = Field(description="What was wrong, in words.")


class BatchPredictItem(PredictResponse):
    """An item of ``POST /batches`` that was classified: its place, then the body ``POST /predict`` gives."""

    _before_extras = ("index", "job_id")

    index: int = Field(description="The item's place in the request's items, from 0.")


class BatchResponse(BaseModel):
    """``POST /batches``: each item's answer, in input order."""

    batch_id: str | None = Field(
        description="Names the batch in GET /batches/{batch_id}; null when no job was made (slow: never, or shed)."
    )
    items: list[BatchPredictItem | BatchItemError] = Field(description="One per item sent, in input order.")


class BatchCounts(BaseModel):
    """A batch's items by status: its jobs' statuses, and ``refused`` for items that never became jobs."""

    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    expired: int
    refused: int = Field(description="Items that never became jobs, or whose job no longer exists.")


class BatchJobItem(JobResponse):
    """An item of ``GET /batches/{batch_id}`` that became a job: its place, then the job as ``GET /job`` shows it."""

    _before_extras = ("index",)

    index: int = Field(description="The item's place in the request's items, from 0.")


class BatchStatusResponse(BaseModel):
    """``GET /batches/{batch_id}``: the batch's progress and every item."""

    batch_id: str = Field(description="The batch's id.")
    created_at: str = Field(description="When the batch was accepted (ISO 8601, UTC).")
    total: int = Field(description="Items sent, refused ones included.")
    done: bool = Field(description="true once every job of the batch has reached a final status.")
    counts: BatchCounts = Field(description="Items by status.")
    items: list[BatchJobItem | BatchItemError] = Field(description="One per item sent, in input order.")


class HealthResponse(BaseModel):
    health: Literal["ok"] = Field(description="Always ok when the function answers.")


class BackendCheck(BaseModel):
    """One backend's health; backends add their own figures beside ``status``."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "degraded", "error", "idle", "unknown"] = Field(
        description="ok; degraded (serving, not as asked: a worker on a provider other than the one configured); "
        "error (unreachable); idle (no live worker: normal when scaled to zero); unknown."
    )
    detail: str | None = Field(default=None, description="What went wrong, when status is error or unknown.")


class HealthAllResponse(SeedShaped):
    """Every backend's health; also ``"<model name>": "ok"`` keys for each model that is serving."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"additionalProperties": {"type": "string", "description": "<model name>: ok or why not"}},
    )

    status: Literal["ok", "degraded"] = Field(description="degraded when any backend reports an error or is degraded.")
    backends: dict[str, BackendCheck] = Field(description="fast_model, queue, table and worker checks.")


class InputContract(BaseModel):
    json_body: dict[str, str] = Field(alias="json", description="The JSON body's shape.")
    raw: str = Field(description="The raw body alternative.")
    max_bytes: int = Field(description="Largest accepted image file, in bytes.")
    max_pixels: int = Field(description="Largest accepted image, in decoded pixels.")
    fast_model_input: str = Field(description="The tensor the fast model takes.")
    uploads: dict[str, Any] | None = Field(
        default=None,
        description="Bigger images go through POST /uploads: its max_bytes, expiry_seconds and content_types "
        "(null where the service has no payload bucket).",
    )


class MetadataResponse(BaseModel):
    """The input and output contract and both model cards (the seed's metadata keys first)."""

    data_type: str = Field(description="Seed metadata: the input's type.")
    data_structure: str = Field(description="Seed metadata: the input's structure.")
    data_sample: str = Field(description="Seed metadata: what an input looks like.")
    prediction_type: str = Field(description="Seed metadata: the output's type.")
    prediction_structure: str = Field(description="Seed metadata: the output's structure.")
    prediction_sample: str = Field(description="Seed metadata: what an output looks like.")
    input: InputContract = Field(description="What /predict accepts.")
    output: dict[str, str] = Field(description="What /predict and /job answer.")
    models: dict[str, dict[str, Any] | None] = Field(
        description="The fast and slow models' cards (the slow card is null until a worker has reported it)."
    )


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: a stable machine-readable code and a sentence for people."""

    error: str = Field(description="Stable error code, e.g. invalid_image, payload_too_large, not_found.")
    detail: str = Field(description="What was wrong, in words.")

"""Request and response models: the HTTP contract, kept compatible with the sync-async seed.

The seed's shapes stay as they were (``{"job_id", "<fast model>": "<label>"}`` from ``/predict``,
``{"<job_id>": {"prediction": "<label>"}}`` from ``/job/{id}``); every richer field sits beside them.
Routes build these models and FastAPI serialises them through ``response_model``, so what the
OpenAPI schema says is what clients get.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from twopass.jobs.base import JobRecord, JobStatus

JobStatusName = Literal["queued", "running", "succeeded", "failed"]


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

    image_data: str = Field(description="The image file (JPEG, PNG, WebP, GIF, BMP or TIFF), base64-encoded.")
    callback_url: str | None = Field(
        default=None,
        description="https URL that receives a signed POST when the slow result is final "
        "(for raw image bodies, pass it as the callback_url query parameter).",
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


class PredictResponse(SeedShaped):
    """``{"job_id", "<fast model name>": "<label>"}`` plus the fast top-k and the job's status."""

    _before_extras = ("job_id",)

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "description": "Besides the fields below, one key named after the fast model holds its top-1 label "
            f'(the seed\'s shape), e.g. "{_FAST_KEY}": "tiger cat".',
            "additionalProperties": {"type": "string", "description": "<fast model name>: its top-1 label"},
        },
    )

    job_id: str = Field(description="Id of the slow job (32 hex characters); read it at status_url.")
    status: JobStatusName = Field(description="The job's status when answered: queued.")
    fast: ModelResult = Field(description="The fast model's answer, given at once.")
    status_url: str = Field(description="Where the slow result will be: /job/{job_id}.")

    @classmethod
    def build(cls, job_id: str, fast: dict[str, Any]) -> PredictResponse:
        return cls.model_validate(
            {
                "job_id": job_id,
                fast["model"]: fast["label"],
                "status": JobStatus.QUEUED.value,
                "fast": fast,
                "status_url": f"/job/{job_id}",
            }
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
    status: JobStatusName = Field(description="queued → running → succeeded | failed.")
    created_at: str = Field(description="When the job was accepted (ISO 8601, UTC).")
    updated_at: str | None = Field(default=None, description="Last status change.")
    started_at: str | None = Field(default=None, description="When a worker last started it.")
    finished_at: str | None = Field(default=None, description="When it reached its final status.")
    attempts: int = Field(default=0, description="Deliveries to a worker so far.")
    slow: ModelResult | None = Field(default=None, description="The slow model's answer once succeeded.")
    error: str | None = Field(default=None, description="Why the job failed, when it did.")

    @classmethod
    def from_record(cls, record: JobRecord) -> JobResponse:
        succeeded = record.status is JobStatus.SUCCEEDED
        label = record.result.get("label") if record.result and succeeded else None
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
            }
        )


class HealthResponse(BaseModel):
    health: Literal["ok"] = Field(description="Always ok when the function answers.")


class BackendCheck(BaseModel):
    """One backend's health; backends add their own figures beside ``status``."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "error", "idle", "unknown"] = Field(
        description="ok; error (unreachable); idle (no live worker: normal when scaled to zero); unknown."
    )
    detail: str | None = Field(default=None, description="What went wrong, when status is error or unknown.")


class HealthAllResponse(SeedShaped):
    """Every backend's health; also ``"<model name>": "ok"`` keys for each model that is serving."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"additionalProperties": {"type": "string", "description": "<model name>: ok or why not"}},
    )

    status: Literal["ok", "degraded"] = Field(description="degraded when any backend reports an error.")
    backends: dict[str, BackendCheck] = Field(description="fast_model, queue, table and worker checks.")


class InputContract(BaseModel):
    json_body: dict[str, str] = Field(alias="json", description="The JSON body's shape.")
    raw: str = Field(description="The raw body alternative.")
    max_bytes: int = Field(description="Largest accepted image file, in bytes.")
    max_pixels: int = Field(description="Largest accepted image, in decoded pixels.")
    fast_model_input: str = Field(description="The tensor the fast model takes.")


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

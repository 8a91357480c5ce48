"""Request and response models: the HTTP contract, kept compatible with the sync-async seed.

The seed's shapes stay as they were (``{"job_id", "<fast model>": "<label>"}`` from ``/predict``,
``{"<job_id>": {"prediction": "<label>"}}`` from ``/job/{id}``); every richer field sits beside them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatusName = Literal["queued", "running", "succeeded", "failed"]


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
    label: str
    probability: float
    class_id: int


class ModelResult(BaseModel):
    """One model's answer for one image."""

    model: str
    label: str
    top_k: list[LabelScore]
    inference_ms: float | None = None
    batch_size: int | None = None
    queue_wait_ms: float | None = None


class PredictResponse(BaseModel):
    """``{"job_id", "<fast model name>": "<label>"}`` plus the fast top-k and the job's status."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    status: JobStatusName
    fast: ModelResult
    status_url: str


class JobResponse(BaseModel):
    """``{"<job_id>": {"prediction": "<label>" | null}}`` plus the job's lifecycle and slow top-k."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    status: JobStatusName
    created_at: str
    updated_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    slow: ModelResult | None = None
    error: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: a stable machine-readable code and a sentence for people."""

    error: str = Field(description="Stable error code, e.g. invalid_image, payload_too_large, not_found.")
    detail: str = Field(description="What was wrong, in words.")

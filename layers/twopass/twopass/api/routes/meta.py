"""``/health``, ``/health/all`` and ``/metadata``: is it up, is everything behind it up, what it takes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from twopass.api.auth import caller
from twopass.api.context import Context
from twopass.api.schemas import HealthAllResponse, HealthResponse, MetadataResponse
from twopass.api.services.service import TwopassService
from twopass.models.labels import label_set_name
from twopass.uploads import IMAGE_TYPES

#: Open: load balancers and uptime checks call it without a key.
open_router = APIRouter(tags=["health"])
router = APIRouter(tags=["health"], dependencies=[Depends(caller)])


@open_router.get("/health", summary="Liveness", response_model=HealthResponse)
async def health() -> HealthResponse:
    return HealthResponse(health="ok")


@router.get(
    "/health/all",
    summary="Every backend's health",
    response_model=HealthAllResponse,
    response_model_exclude_unset=True,
)
async def health_all(context: Context) -> HealthAllResponse:
    service = context.service
    checks = await context.io(service.reports.health)
    slow_card = await context.io(service.reports.slow_card)
    body: dict[str, Any] = {}
    if checks["fast_model"]["status"] == "ok":
        body[checks["fast_model"]["model"]] = "ok"
    if slow_card:
        worker = checks["worker"]["status"]
        body[slow_card["name"]] = "ok" if worker == "ok" else worker
    degraded = any(c["status"] in ("error", "degraded") for c in checks.values())
    return HealthAllResponse.model_validate({**body, "status": "degraded" if degraded else "ok", "backends": checks})


@router.get("/metadata", summary="Input and output contract, both model cards", response_model=MetadataResponse)
async def metadata(context: Context) -> MetadataResponse:
    service = context.service
    fast_card = service.classifier.card
    labels = service.classifier.labels
    settings = context.settings
    return MetadataResponse.model_validate(
        {
            "data_type": "str",
            "data_structure": "(1,1)",
            "data_sample": "base64 encoded image file",
            "prediction_type": "float32",
            "prediction_structure": f"(1,{len(labels)})",
            "prediction_sample": "[0.00012, 0.00003, 0.00021, ...]",
            "input": {
                "json": {"image_data": "<base64 of a JPEG/PNG/WebP/GIF/BMP/TIFF file>"},
                "raw": "a body with Content-Type image/*",
                "max_bytes": settings.max_image_bytes,
                "max_pixels": settings.max_image_pixels,
                "fast_model_input": fast_card.preprocessing.describe(),
                "uploads": _uploads(service),
            },
            "output": {
                "fast": f"top-{settings.top_k} labels with probabilities",
                "labels": label_set_name(labels),
                "scores": fast_card.output,
            },
            "models": {"fast": fast_card.to_dict(), "slow": await context.io(service.reports.slow_card)},
        }
    )


def _uploads(service: TwopassService) -> dict[str, Any] | None:
    """How an image over ``max_bytes`` gets in: ``POST /uploads`` (clients switch to it on their own)."""
    uploads = service.uploads
    if uploads is None:
        return None
    return {
        "path": "/uploads",
        "max_bytes": uploads.max_bytes,
        "expiry_seconds": uploads.expiry_seconds,
        "content_types": list(IMAGE_TYPES),
    }

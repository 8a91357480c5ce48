"""The slow models a worker serves, loaded exactly as its settings say: one place for the worker's
start, its preflight and a rollout's candidate, so the three can never load a model differently."""

from __future__ import annotations

from twopass.config import Settings
from twopass.models.runtime import Classifier


def load_slow(settings: Settings, location: str | None = None) -> Classifier:
    """The model at ``location`` (by default the slow model) on the configured providers and threads."""
    return Classifier.from_location(
        location or settings.slow_model,
        providers=settings.session_providers,
        intra_op_threads=settings.intra_op_threads,
        top_k=settings.top_k,
        allow_fallback=settings.allow_cpu_fallback,
    )

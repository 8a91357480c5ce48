"""Class names: the bundled ImageNet-1k list, and the helpers a model pack's labels go through."""

from __future__ import annotations

import json
from functools import lru_cache

from twopass.config import DATA_DIR

#: A card's ``labels`` naming the bundled ImageNet-1k class names.
IMAGENET = "imagenet-1k"


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    labels = json.loads((DATA_DIR / "imagenet_labels.json").read_text())
    if len(labels) != 1000:
        raise ValueError(f"expected 1000 ImageNet labels, found {len(labels)}")
    return tuple(labels)


def label_set_name(labels: tuple[str, ...]) -> str:
    """``ImageNet-1k`` for the bundled names, else ``<n> classes``: what ``/metadata`` shows."""
    return "ImageNet-1k" if labels == imagenet_labels() else f"{len(labels)} classes"

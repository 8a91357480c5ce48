"""ImageNet-1k class names, in class-index order."""

from __future__ import annotations

import json
from functools import lru_cache

from twopass.config import DATA_DIR


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    labels = json.loads((DATA_DIR / "imagenet_labels.json").read_text())
    if len(labels) != 1000:
        raise ValueError(f"expected 1000 ImageNet labels, found {len(labels)}")
    return tuple(labels)

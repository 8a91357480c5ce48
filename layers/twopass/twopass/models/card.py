"""Model cards: the JSON file beside each ``.onnx`` that says what the model is and how to feed it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CARD_SUFFIX = ".card.json"


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor; the runtime follows it to the letter."""

    input_size: int
    resize_shorter: int
    interpolation: str = "bilinear"
    mean: float = 127.0
    std: float = 128.0
    layout: str = "NCHW"
    channel_order: str = "RGB"

    @classmethod
    def for_input(cls, input_size: int, crop_fraction: float = 0.875) -> Preprocessing:
        """The EfficientNet-Lite recipe: shorter side to ``size / crop_fraction``, then centre crop."""
        return cls(input_size=input_size, resize_shorter=int(input_size / crop_fraction))


@dataclass(frozen=True)
class ModelCard:
    """Identity, provenance and input contract of one exported model."""

    name: str
    version: str
    role: str
    file: str
    sha256: str
    size_bytes: int
    precision: str
    input_name: str
    output_name: str
    preprocessing: Preprocessing
    labels: str
    license: str
    source: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        fields = dict(data)
        fields["preprocessing"] = Preprocessing(**fields["preprocessing"])
        return cls(**fields)

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        return cls.from_dict(json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def card_path(model_path: Path) -> Path:
    """Where the card of ``model_path`` lives: ``name.onnx`` → ``name.card.json``."""
    return model_path.with_name(model_path.stem + CARD_SUFFIX)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

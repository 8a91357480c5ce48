"""Model cards: the JSON file beside each ``.onnx`` that says what the model is and how to feed it.

The format is documented in ``docs/models.md`` and as a JSON schema in the package
(``twopass/data/model-card.schema.json``); :func:`twopass.models.pack.load_pack` validates a card
against it before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CARD_SUFFIX = ".card.json"

LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
#: ``crop``: shorter side to ``resize_shorter`` (or ``input_size / crop_fraction``), then the centre
#: square; ``direct``: the whole image straight to ``input_size`` square, aspect ratio not kept.
RESIZE_MODES = ("crop", "direct")
#: ``logits``: softmax over the classes; ``probabilities``: the model's output as it is;
#: ``sigmoid``: one independent probability per class (multi-label), labels over ``threshold`` kept.
OUTPUT_KINDS = ("logits", "probabilities", "sigmoid")


def _channels(value: float | list[float] | tuple[float, ...]) -> tuple[float, float, float]:
    """A scalar or a per-channel (R, G, B) list as three floats."""
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    items = tuple(float(v) for v in value)
    if len(items) != 3:
        raise ValueError(f"needs 3 values (R,G,B), got {len(items)}")
    return items[0], items[1], items[2]


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor; the runtime follows it to the letter.

    ``x = (pixel / pixel_scale - mean) / std`` per channel, with ``mean`` and ``std`` given in R, G, B
    order whatever ``channel_order`` the model takes (as torchvision, timm and Hugging Face publish
    them, in 0–1 units with ``pixel_scale`` 255). The bundled EfficientNet-Lite models take raw
    0–255 pixels: ``pixel_scale`` 1, mean 127, std 128.
    """

    input_size: int
    resize_shorter: int = 0
    interpolation: str = "bilinear"
    #: One number for all channels, or three in R, G, B order.
    mean: float | tuple[float, ...] = 127.0
    std: float | tuple[float, ...] = 128.0
    layout: str = "NCHW"
    channel_order: str = "RGB"
    resize: str = "crop"
    crop_fraction: float = 0.0
    pixel_scale: float = 1.0

    def __post_init__(self) -> None:
        # A JSON list becomes a tuple: cards compare equal (rollouts check for the same input) and hash.
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(float(v) for v in value))

    @property
    def channel_mean(self) -> tuple[float, float, float]:
        """``mean`` as three floats, R, G, B."""
        return _channels(self.mean)

    @property
    def channel_std(self) -> tuple[float, float, float]:
        """``std`` as three floats, R, G, B."""
        return _channels(self.std)

    @classmethod
    def for_input(cls, input_size: int, crop_fraction: float = 0.875) -> Preprocessing:
        """The EfficientNet-Lite recipe: shorter side to ``size / crop_fraction``, then centre crop."""
        return cls(input_size=input_size, resize_shorter=int(input_size / crop_fraction))

    @property
    def shorter_side(self) -> int:
        """The shorter side after the resize (``crop`` mode); ``input_size`` for a direct resize."""
        if self.resize == "direct":
            return self.input_size
        if self.resize_shorter:
            return self.resize_shorter
        # timm's rule: scale_size = floor(img_size / crop_pct).
        return int(self.input_size / (self.crop_fraction or 1.0))

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        side = self.input_size
        return (batch, 3, side, side) if self.layout == "NCHW" else (batch, side, side, 3)

    def describe(self) -> str:
        """``(N,3,224,224) float32 RGB`` (or NHWC/BGR): the input contract in one line."""
        shape = "(N,3,{s},{s})" if self.layout == "NCHW" else "(N,{s},{s},3)"
        return f"{shape.format(s=self.input_size)} float32 {self.channel_order}"


@dataclass(frozen=True)
class ModelCard:
    """Identity, provenance and input/output contract of one exported model."""

    name: str
    file: str
    input_name: str
    output_name: str
    preprocessing: Preprocessing
    #: Inline (one name per class, in class-index order), a file beside the card (``labels.txt``: one
    #: per line; ``labels.json``: a list), or ``imagenet-1k`` (the bundled ImageNet class names).
    labels: str | tuple[str, ...]
    version: str = "0"
    role: str = ""
    sha256: str = ""
    size_bytes: int = 0
    precision: str = ""
    license: str = ""
    output: str = "logits"
    threshold: float = 0.5
    labels_source: str = ""
    source: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("mean", "std"):
            if isinstance(data["preprocessing"][key], tuple):
                data["preprocessing"][key] = list(data["preprocessing"][key])
        if isinstance(self.labels, tuple):
            data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        fields = dict(data)
        pre = dict(fields["preprocessing"])
        if "pixel_scale" not in pre:
            # Unset: 0–1 units (pixel_scale 255) when the means say so, else raw pixels as older cards had.
            pre["pixel_scale"] = 255.0 if max(_channels(pre.get("mean", 127.0))) <= 1.0 else 1.0
        fields["preprocessing"] = Preprocessing(**pre)
        if isinstance(fields.get("labels"), list):
            fields["labels"] = tuple(fields["labels"])
        return cls(**fields)

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        return cls.from_dict(json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def card_path(model_path: Path) -> Path:
    """Where the card of ``model_path`` lives: ``name.onnx`` → ``name.card.json``."""
    return model_path.with_name(model_path.stem + CARD_SUFFIX)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

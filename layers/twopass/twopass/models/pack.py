"""Model packs: an ONNX file, its card and its labels, validated before anything serves from them.

A pack is a directory holding ``card.json`` (or one ``<stem>.card.json``), the ONNX file the card
names and, when the card says so, a labels file; or an ``.onnx`` path with its ``<stem>.card.json``
beside it (the bundled models). Every problem is one :class:`ModelPackError` line naming what is wrong
and how to fix it: the API, the worker and ``twopass model check`` refuse to start with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from twopass.exceptions import ModelLoadError
from twopass.models.card import (
    CARD_SUFFIX,
    CHANNEL_ORDERS,
    INTERPOLATIONS,
    LAYOUTS,
    OUTPUT_KINDS,
    RESIZE_MODES,
    ModelCard,
    card_path,
    sha256_file,
)
from twopass.models.labels import IMAGENET, imagenet_labels

#: The card's name in a pack directory (``twopass model init`` writes it).
PACK_CARD = "card.json"
REQUIRED = ("name", "file", "input_name", "output_name", "preprocessing", "labels")
OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "version": str,
    "role": str,
    "sha256": str,
    "size_bytes": int,
    "precision": str,
    "license": str,
    "output": str,
    "threshold": (int, float),
    "labels_source": str,
    "source": dict,
    "metrics": dict,
}
PREPROCESSING: dict[str, type | tuple[type, ...]] = {
    "input_size": int,
    "resize": str,
    "resize_shorter": int,
    "crop_fraction": (int, float),
    "interpolation": str,
    "mean": (int, float, list),
    "std": (int, float, list),
    "pixel_scale": (int, float),
    "layout": str,
    "channel_order": str,
}
CHOICES = {
    "resize": RESIZE_MODES,
    "interpolation": INTERPOLATIONS,
    "layout": LAYOUTS,
    "channel_order": CHANNEL_ORDERS,
}


class ModelPackError(ModelLoadError):
    """A model pack is invalid; the message is one line: what is wrong and how to fix it."""


@dataclass(frozen=True)
class ModelPack:
    """A validated pack: its card, where its files are, its class names."""

    card: ModelCard
    card_file: Path
    model_file: Path
    labels: tuple[str, ...]

    @property
    def where(self) -> str:
        return str(self.card_file.parent)


class _Tensor(Protocol):
    name: str
    shape: Sequence[int | str | None]


class _Session(Protocol):
    def get_inputs(self) -> Sequence[_Tensor]: ...
    def get_outputs(self) -> Sequence[_Tensor]: ...


def find_card(path: Path) -> Path:
    """The card of a pack directory or of an ``.onnx`` file."""
    if path.is_dir():
        if (path / PACK_CARD).is_file():
            return path / PACK_CARD
        cards = sorted(path.glob("*" + CARD_SUFFIX))
        if len(cards) == 1:
            return cards[0]
        found = "none" if not cards else ", ".join(c.name for c in cards)
        raise ModelPackError(
            f"{path}: a model pack needs one {PACK_CARD} (found {found}); "
            "write one with `twopass model init MODEL.onnx`"
        )
    if not path.exists():
        raise ModelPackError(
            f"{path}: no such model file or pack directory; check TWOPASS_FAST_MODEL/TWOPASS_SLOW_MODEL"
        )
    card = card_path(path)
    if not card.is_file():
        raise ModelPackError(f"{path}: no model card {card.name} beside it; write one with `twopass model init {path}`")
    return card


def load_pack(path: Path, *, verify_sha256: bool = True) -> ModelPack:
    """Read and validate the pack at ``path`` (a directory or an ``.onnx``); the ONNX graph is not opened."""
    card_file = find_card(path)
    where = f"{card_file}"
    try:
        data = json.loads(card_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelPackError(f"{where}: not a readable JSON card ({_one_line(exc)}); see docs/models.md") from exc
    validate_card(data, where)
    card = ModelCard.from_dict(data)
    model_file = card_file.parent / card.file
    if not model_file.is_file():
        raise ModelPackError(f"{where}: the model file {card.file!r} is not in {card_file.parent}; fix 'file'")
    if verify_sha256 and card.sha256 and sha256_file(model_file) != card.sha256:
        raise ModelPackError(
            f"{where}: {card.file} does not match the card's sha256 (a changed or partial file); "
            "copy the pack again or run `twopass model init` for the new file"
        )
    labels = read_labels(card, card_file.parent, where)
    if isinstance(card.labels, str) and labels != imagenet_labels():
        # A labels file goes inline: the card the worker's heartbeat, /metadata and OIP show then names the
        # classes wherever the pack's files are not (the API host does not have the slow pack).
        card = replace(card, labels=labels, labels_source=card.labels_source or card.labels)
    return ModelPack(card, card_file, model_file, labels)


def count_labels(card: dict[str, Any]) -> int:
    """The number of classes a card (as a dict, possibly from a worker's heartbeat) names; -1 if unknown."""
    labels = card.get("labels")
    if isinstance(labels, (list, tuple)):
        return len(labels)
    if isinstance(labels, str) and (labels == IMAGENET or labels.startswith(IMAGENET + " ")):
        return len(imagenet_labels())
    return -1


def check_pair(fast_location: str, slow_location: str) -> None:
    """Refuse two local packs whose label sets differ; one that is not on this host is checked where it is."""
    paths = [Path(loc.removeprefix("file://")).expanduser() for loc in (fast_location, slow_location)]
    if any("://" in loc and not loc.startswith("file://") for loc in (fast_location, slow_location)):
        return
    if not all(path.exists() for path in paths):
        return
    check_agreement(load_pack(paths[0], verify_sha256=False), load_pack(paths[1], verify_sha256=False))


def validate_card(data: Any, where: str) -> None:
    """Refuse what the schema (``twopass/data/model-card.schema.json``) refuses, naming the field."""
    if not isinstance(data, dict):
        raise ModelPackError(f"{where}: the card must be a JSON object; see docs/models.md")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise ModelPackError(f"{where}: the card lacks {', '.join(missing)}; see docs/models.md for the card format")
    for key in ("name", "file", "input_name", "output_name"):
        if not isinstance(data[key], str) or not data[key]:
            raise ModelPackError(f"{where}: '{key}' must be a non-empty string")
    for key in ("file", "labels"):
        if isinstance(data[key], str) and (".." in Path(data[key]).parts or Path(data[key]).is_absolute()):
            raise ModelPackError(f"{where}: '{key}' must name a file in the pack, not {data[key]!r}")
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ModelPackError(f"{where}: unknown card field(s) {', '.join(unknown)}; see docs/models.md")
    for key, kind in OPTIONAL.items():
        if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            raise ModelPackError(f"{where}: '{key}' has the wrong type ({type(data[key]).__name__})")
    if data.get("output", "logits") not in OUTPUT_KINDS:
        raise ModelPackError(f"{where}: 'output' must be one of {', '.join(OUTPUT_KINDS)} (got {data['output']!r})")
    if not 0 < data.get("threshold", 0.5) < 1:
        raise ModelPackError(f"{where}: 'threshold' must be between 0 and 1 (got {data['threshold']})")
    labels = data["labels"]
    if not (isinstance(labels, str) and labels) and not (
        isinstance(labels, list) and labels and all(isinstance(x, str) and x for x in labels)
    ):
        raise ModelPackError(f"{where}: 'labels' must be a list of class names or a labels file name")
    _validate_preprocessing(data["preprocessing"], where)


def _validate_preprocessing(pre: Any, where: str) -> None:
    if not isinstance(pre, dict):
        raise ModelPackError(f"{where}: 'preprocessing' must be an object")
    unknown = sorted(set(pre) - set(PREPROCESSING))
    if unknown:
        raise ModelPackError(f"{where}: unknown preprocessing field(s) {', '.join(unknown)}; see docs/models.md")
    if "input_size" not in pre:
        raise ModelPackError(f"{where}: 'preprocessing.input_size' is missing (the side of the square input)")
    for key, kind in PREPROCESSING.items():
        if key in pre and (not isinstance(pre[key], kind) or isinstance(pre[key], bool)):
            raise ModelPackError(f"{where}: 'preprocessing.{key}' has the wrong type ({type(pre[key]).__name__})")
    for key, choices in CHOICES.items():
        if key in pre and pre[key] not in choices:
            raise ModelPackError(
                f"{where}: 'preprocessing.{key}' must be one of {', '.join(choices)} (got {pre[key]!r})"
            )
    if pre["input_size"] < 1 or pre.get("resize_shorter", 0) < 0:
        raise ModelPackError(f"{where}: 'preprocessing.input_size' and 'resize_shorter' must be positive")
    if 0 < pre.get("resize_shorter", 0) < pre["input_size"]:
        raise ModelPackError(
            f"{where}: 'preprocessing.resize_shorter' is smaller than 'input_size'; the crop would not fit"
        )
    if not 0 <= pre.get("crop_fraction", 0) <= 1:
        raise ModelPackError(f"{where}: 'preprocessing.crop_fraction' must be between 0 and 1 (timm's crop_pct)")
    if pre.get("pixel_scale", 1) <= 0:
        raise ModelPackError(f"{where}: 'preprocessing.pixel_scale' must be positive (255 for mean/std in 0-1 units)")
    for key in ("mean", "std"):
        value = pre.get(key, 1.0)
        values = value if isinstance(value, list) else [value]
        if len(values) not in (1, 3) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise ModelPackError(f"{where}: 'preprocessing.{key}' must be a number or 3 numbers in R,G,B order")
    std = pre.get("std", 1.0)
    if any(v <= 0 for v in (std if isinstance(std, list) else [std])):
        raise ModelPackError(f"{where}: 'preprocessing.std' must be positive")


def read_labels(card: ModelCard, folder: Path, where: str) -> tuple[str, ...]:
    """The class names: inline, from a file beside the card, or the bundled ImageNet-1k names."""
    if isinstance(card.labels, tuple):
        return card.labels
    # Older bundled cards carried a description ("imagenet-1k class names from …") in this field.
    if card.labels == IMAGENET or card.labels.startswith(IMAGENET + " "):
        return imagenet_labels()
    path = folder / card.labels
    if not path.is_file():
        raise ModelPackError(
            f"{where}: the labels file {card.labels!r} is not in {folder}; add it or list the labels inline"
        )
    try:
        text = path.read_text(encoding="utf-8")
        labels = (
            json.loads(text) if path.suffix == ".json" else [line.strip() for line in text.splitlines() if line.strip()]
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelPackError(f"{where}: could not read the labels file {card.labels!r}: {_one_line(exc)}") from exc
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ModelPackError(
            f"{where}: {card.labels!r} must hold one class name per class (a .txt line or a .json list)"
        )
    return tuple(labels)


def check_session(pack: ModelPack, session: _Session) -> None:
    """Refuse a graph whose input or output does not match the card, before any image reaches it."""
    card, pre, where = pack.card, pack.card.preprocessing, str(pack.card_file)
    inputs = {i.name: i for i in session.get_inputs()}
    if card.input_name not in inputs:
        raise ModelPackError(
            f"{where}: the model has no input {card.input_name!r} (it has {', '.join(map(repr, inputs))});"
            f" fix 'input_name'"
        )
    shape = list(inputs[card.input_name].shape)
    if len(shape) != 4:
        raise ModelPackError(
            f"{where}: input {card.input_name!r} has shape {shape}; an image classifier takes 4 dimensions"
        )
    want = pre.input_shape()
    for axis in range(1, 4):
        if isinstance(shape[axis], int) and shape[axis] != want[axis]:
            got_layout = guess_layout(shape)
            hint = (
                f"the model looks {got_layout}; set 'preprocessing.layout' to {got_layout}"
                if got_layout and got_layout != pre.layout
                else "set 'preprocessing.input_size' to what the model was exported for"
            )
            raise ModelPackError(
                f"{where}: input {card.input_name!r} is {tuple(shape)} but the card gives {pre.describe()}; {hint}"
            )
    outputs = {o.name: o for o in session.get_outputs()}
    if card.output_name not in outputs:
        raise ModelPackError(
            f"{where}: the model has no output {card.output_name!r} (it has {', '.join(map(repr, outputs))});"
            f" fix 'output_name'"
        )
    out_shape = list(outputs[card.output_name].shape)
    if out_shape and isinstance(out_shape[-1], int):
        check_width(pack, out_shape[-1])


def check_width(pack: ModelPack, width: int) -> None:
    if width != len(pack.labels):
        raise ModelPackError(
            f"{pack.card_file}: the model scores {width} classes but the card has {len(pack.labels)} labels; "
            "give one label per output class, in class-index order"
        )


def guess_layout(shape: Sequence[int | str | None]) -> str | None:
    """NCHW or NHWC from a 4-d shape where the 3 channels tell (``None`` when they do not)."""
    if len(shape) != 4:
        return None
    if shape[1] == 3 and shape[3] != 3:
        return "NCHW"
    if shape[3] == 3 and shape[1] != 3:
        return "NHWC"
    return None


def check_agreement(fast: ModelPack, slow: ModelPack, roles: tuple[str, str] = ("fast", "slow")) -> None:
    """Both passes must name the same classes in the same order: the cascade and agreement compare them."""
    if fast.labels == slow.labels:
        return
    if set(fast.labels) == set(slow.labels):
        detail = "the same names in a different order"
    else:
        only = sorted(set(fast.labels) ^ set(slow.labels))[:3]
        detail = f"{len(fast.labels)} vs {len(slow.labels)} labels, e.g. {', '.join(map(repr, only))} in only one"
    raise ModelPackError(
        f"the {roles[0]} pack ({fast.where}) and the {roles[1]} pack ({slow.where}) have different label sets "
        f"({detail}); "
        "both models must classify into the same classes in the same order"
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def one_line(text: str) -> str:
    """Error text from onnxruntime spans lines; the start-up line must not."""
    return " ".join(text.split())


def not_onnx(model_file: Path, exc: BaseException) -> ModelPackError:
    """The one line for a file onnxruntime cannot load."""
    return ModelPackError(
        f"{model_file}: not an ONNX model onnxruntime can load ({one_line(str(exc))[:300]}); "
        "export it again (docs/models.md)"
    )


def check_graph(pack: ModelPack) -> None:
    """Open the graph (CPU, no optimisation: fast) and check its input and output against the card."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(pack.model_file), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        raise not_onnx(pack.model_file, exc) from exc
    check_session(pack, session)


def preflight(fast_location: str, slow_location: str) -> None:
    """What the services would refuse at start, checked before any is started (``make run``)."""
    for location in (fast_location, slow_location):
        if "://" not in location or location.startswith("file://"):
            check_graph(load_pack(Path(location.removeprefix("file://")).expanduser()))
    check_pair(fast_location, slow_location)

"""Small ONNX image classifiers built in code, and packs around them, for the model-pack tests.

Each model averages the image per channel and scores classes with a 3 x C matrix: the colour of a
flat image decides its class, so a test can tell whether layout, channel order and mean/std reached
the model as the card says.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

#: Five user classes; the first three win on a red, a green and a blue image.
FLOWERS = ("rose", "fern", "cornflower", "daisy", "tulip")
#: ImageNet mean/std in 0–1 units, R, G, B (as torchvision, timm and Hugging Face publish them).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def build_model(
    path: Path,
    *,
    weights: np.ndarray,
    size: int,
    layout: str = "NCHW",
    input_name: str = "pixel_values",
    output_name: str = "logits",
    bias: np.ndarray | None = None,
) -> Path:
    """An ONNX classifier ``(N, 3, S, S)`` or ``(N, S, S, 3)`` → ``(N, C)``: per-channel mean, then ``x @ weights + bias``.

    ``weights`` rows are the model's channels in its own order (for a BGR model row 0 is blue).
    """
    classes = weights.shape[1]
    shape: list[Any] = ["batch", 3, size, size] if layout == "NCHW" else ["batch", size, size, 3]
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", [input_name], ["pooled"], axes=axes, keepdims=0),
            helper.make_node("MatMul", ["pooled", "W"], ["scores"]),
            helper.make_node("Add", ["scores", "B"], [output_name]),
        ],
        "colour-classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", classes])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array((np.zeros(classes) if bias is None else bias).astype(np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def colour_weights(classes: int, winners: Sequence[int] = (0, 1, 2), bgr: bool = False) -> np.ndarray:
    """Red, green, blue images make classes ``winners[0]``, ``[1]``, ``[2]`` win; the rest lose."""
    weights = np.zeros((3, classes), dtype=np.float32)
    for channel, cls in enumerate(winners):
        row = 2 - channel if bgr else channel
        weights[row, cls] = 4.0
    return weights


def write_pack(
    folder: Path,
    *,
    labels: Sequence[str] | str,
    size: int,
    layout: str = "NCHW",
    channel_order: str = "RGB",
    output: str = "logits",
    name: str = "flowers",
    weights: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    labels_file: bool = True,
    **card: Any,
) -> Path:
    """A pack directory: ``model.onnx``, ``card.json`` and (``labels_file``) ``labels.txt``."""
    n = len(labels) if not isinstance(labels, str) else 5
    build_model(
        folder / "model.onnx",
        weights=colour_weights(n, bgr=channel_order == "BGR") if weights is None else weights,
        bias=bias,
        size=size,
        layout=layout,
    )
    if labels_file and not isinstance(labels, str):
        (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    body: dict[str, Any] = {
        "name": name,
        "version": "1.0",
        "file": "model.onnx",
        "input_name": "pixel_values",
        "output_name": "logits",
        "output": output,
        "labels": "labels.txt" if labels_file and not isinstance(labels, str) else labels,
        "preprocessing": {
            "input_size": size,
            "resize": "crop",
            "crop_fraction": 0.875,
            "interpolation": "bicubic",
            "mean": list(MEAN),
            "std": list(STD),
            "pixel_scale": 255,
            "layout": layout,
            "channel_order": channel_order,
        },
    }
    body.update(card)
    (folder / "card.json").write_text(json.dumps(body, indent=2))
    return folder


def flat_image(rgb: tuple[int, int, int], size: tuple[int, int] = (300, 200), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, rgb).save(out, format=fmt)
    return out.getvalue()

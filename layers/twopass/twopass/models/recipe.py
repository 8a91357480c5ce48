"""A model pack written from an ONNX file: what ``twopass model init`` reads from the graph (input name,
shape, layout where the channels tell, output width), from what a Hugging Face or timm export writes
beside the model (``--from DIR``), and from the flags, which win.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twopass.models.card import INTERPOLATIONS, ModelCard, Preprocessing, sha256_file
from twopass.models.pack import PACK_CARD, ModelPackError, guess_layout, one_line

#: Pillow's resample codes, as Hugging Face image processors store them.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


@dataclass
class Recipe:
    """What ``init`` knows about a model so far: from an exporter's files, then the flags on top."""

    labels: list[str] = field(default_factory=list)
    pre: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class InitOptions:
    """What the user asked for (``twopass model init``'s flags); ``None``: not said, the graph or export decides."""

    model: Path | None = None
    from_dir: Path | None = None
    labels: Path | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    pixel_scale: float | None = None
    layout: str | None = None
    channel_order: str | None = None
    input_size: int | None = None
    resize_shorter: int | None = None
    crop_fraction: float | None = None
    direct: bool = False
    interpolation: str | None = None
    output: str | None = None
    threshold: float = 0.5
    name: str | None = None
    version: str = "1"
    out: Path | None = None


def write_pack(options: InitOptions) -> Path:
    """Write the pack (the model, ``labels.txt``, the card); returns its directory."""
    recipe = Recipe()
    model = options.model
    if options.from_dir is not None:
        recipe, found = from_export(options.from_dir)
        model = model or found
    if model is None:
        raise ModelPackError("give the .onnx file, or --from a folder holding one")
    if not model.is_file():
        raise ModelPackError(f"{model}: no such file")
    graph = read_graph(model)
    if options.labels is not None:
        recipe.labels = read_label_file(options.labels)
    if not recipe.labels:
        raise ModelPackError("no labels: give --labels labels.txt (one class name per line, in class-index order)")
    pre = preprocessing(recipe, graph, options)
    name = options.name or recipe.name or model.stem
    target: Path = options.out or Path(name)
    target.mkdir(parents=True, exist_ok=True)
    if model.resolve() != (target / model.name).resolve():
        shutil.copyfile(model, target / model.name)
    (target / "labels.txt").write_text("\n".join(recipe.labels) + "\n", encoding="utf-8")
    card = ModelCard(
        name=name,
        version=options.version,
        file=model.name,
        sha256=sha256_file(model),
        size_bytes=model.stat().st_size,
        input_name=graph["input_name"],
        output_name=graph["output_name"],
        output=options.output or recipe.output or "logits",
        threshold=options.threshold,
        labels="labels.txt",
        preprocessing=pre,
    )
    card.save(target / PACK_CARD)
    return target


def read_graph(model: Path) -> dict[str, Any]:
    """The first input's name and shape, the first output's name and width, as onnxruntime reads them."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise ModelPackError(f"{model}: not an ONNX model onnxruntime can load ({one_line(str(exc))[:300]})") from exc
    first_in, first_out = session.get_inputs()[0], session.get_outputs()[0]
    shape = list(first_in.shape)
    width = first_out.shape[-1] if first_out.shape else None
    return {
        "input_name": first_in.name,
        "shape": shape,
        "layout": guess_layout(shape),
        "output_name": first_out.name,
        "width": width if isinstance(width, int) else None,
    }


def preprocessing(recipe: Recipe, graph: dict[str, Any], options: InitOptions) -> Preprocessing:
    """The card's preprocessing: the flags over the export's over the graph's, then the defaults."""
    pre = dict(recipe.pre)
    shape = graph["shape"]
    layout = options.layout or pre.get("layout") or graph["layout"] or "NCHW"
    side = shape[2] if layout == "NCHW" else shape[1] if len(shape) == 4 else None
    size = options.input_size or (side if isinstance(side, int) else None) or pre.get("input_size")
    if not size:
        raise ModelPackError("the graph's input size is not fixed: give --input-size")
    for key, value in (
        ("mean", options.mean),
        ("std", options.std),
        ("pixel_scale", options.pixel_scale),
        ("channel_order", options.channel_order),
        ("interpolation", options.interpolation),
    ):
        if value is not None:
            pre[key] = value
    if options.resize_shorter:
        pre.update(resize="crop", resize_shorter=options.resize_shorter, crop_fraction=0.0)
    elif options.crop_fraction:
        pre.update(resize="crop", crop_fraction=options.crop_fraction, resize_shorter=0)
    elif options.direct:
        pre.update(resize="direct", resize_shorter=0, crop_fraction=0.0)
    pre.setdefault("mean", [0.0, 0.0, 0.0])
    pre.setdefault("std", [1.0, 1.0, 1.0])
    pre.setdefault("pixel_scale", 255.0)
    pre.setdefault("resize", "crop")
    pre.setdefault("crop_fraction", 0.875 if not pre.get("resize_shorter") else 0.0)
    pre.update(input_size=int(size), layout=layout)
    pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
    return Preprocessing(**pre)


def read_label_file(path: Path) -> list[str]:
    if not path.is_file():
        raise ModelPackError(f"{path}: no such labels file")
    text = path.read_text(encoding="utf-8")
    labels = (
        json.loads(text) if path.suffix == ".json" else [line.strip() for line in text.splitlines() if line.strip()]
    )
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise ModelPackError(f"{path}: needs one class name per class (a .txt line or a .json list of strings)")
    return labels


# -- --from: what exporters write beside the model -----------------------------------------------


def from_export(folder: Path) -> tuple[Recipe, Path]:
    """Labels and preprocessing from a Hugging Face (``id2label``, ``preprocessor_config.json``) or timm export."""
    onnx_files = sorted(folder.glob("*.onnx")) or sorted(folder.glob("onnx/*.onnx"))
    if not onnx_files:
        raise ModelPackError(f"{folder}: no .onnx file in the folder; export the model to ONNX first (docs/models.md)")
    config = _json(folder / "config.json")
    recipe = Recipe()
    if "pretrained_cfg" in config or "label_names" in config:
        _timm(config, recipe)
    elif "id2label" in config:
        _hugging_face(config, _json(folder / "preprocessor_config.json"), recipe)
    else:
        raise ModelPackError(f"{folder}: config.json has neither id2label (Hugging Face) nor pretrained_cfg (timm)")
    return recipe, onnx_files[0]


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelPackError(f"{path.parent}: no {path.name}; --from reads a Hugging Face or timm export folder")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ModelPackError(f"{path}: expected a JSON object")
    return data


def _hugging_face(config: dict[str, Any], processor: dict[str, Any], recipe: Recipe) -> None:
    id2label = config["id2label"]
    recipe.labels = [str(id2label[key]) for key in sorted(id2label, key=int)]
    recipe.output = "sigmoid" if config.get("problem_type") == "multi_label_classification" else "logits"
    size = processor.get("size", {})
    size = {"shortest_edge": size} if isinstance(size, int) else size
    crop = processor.get("crop_size", {})
    crop = {"height": crop} if isinstance(crop, int) else crop
    pre: dict[str, Any] = {"interpolation": PIL_RESAMPLE.get(int(processor.get("resample", 2)), "bilinear")}
    if processor.get("do_center_crop") and crop:
        pre.update(resize="crop", input_size=int(crop["height"]), crop_fraction=0.0)
        pre["resize_shorter"] = int(size.get("shortest_edge") or size.get("height") or crop["height"])
    else:
        side = size.get("shortest_edge") or size.get("height")
        if not side:
            raise ModelPackError("preprocessor_config.json gives no size: give --input-size")
        pre.update(resize="direct", input_size=int(side))
    if processor.get("do_normalize", True):
        pre.update(mean=list(processor.get("image_mean", [0.5] * 3)), std=list(processor.get("image_std", [0.5] * 3)))
    rescale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0
    pre["pixel_scale"] = round(1.0 / rescale, 6)
    recipe.pre = pre


def _timm(config: dict[str, Any], recipe: Recipe) -> None:
    cfg = config.get("pretrained_cfg", {})
    recipe.labels = [str(x) for x in config.get("label_names", [])]
    if not recipe.labels:
        raise ModelPackError("config.json has no label_names: give --labels labels.txt")
    input_size = cfg.get("input_size", [3, 224, 224])
    pre: dict[str, Any] = {
        "input_size": int(input_size[-1]),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": list(cfg.get("mean", [0.485, 0.456, 0.406])),
        "std": list(cfg.get("std", [0.229, 0.224, 0.225])),
        "pixel_scale": 255.0,
        "resize": "crop",
        "crop_fraction": float(cfg.get("crop_pct", 0.875)),
    }
    if pre["interpolation"] not in INTERPOLATIONS:
        pre["interpolation"] = "bicubic"
    recipe.pre = pre
    recipe.name = config.get("architecture")

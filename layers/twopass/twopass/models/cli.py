"""``twopass model init`` and ``twopass model check``: write a model pack from an ONNX file, prove it loads.

``init`` reads the graph (input name, shape, layout where the channels tell, output width) and takes
the rest from flags, or with ``--from DIR`` from what a Hugging Face or timm export writes beside the
model. ``check`` loads the pack as the API and the worker do, runs a warm-up and a real image through
it and prints a one-screen summary; any problem is one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from twopass.exceptions import TwopassError
from twopass.models.card import INTERPOLATIONS, LAYOUTS, OUTPUT_KINDS, ModelCard, Preprocessing, sha256_file
from twopass.models.pack import PACK_CARD, ModelPackError, check_agreement, guess_layout, load_pack, one_line

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
#: Pillow's resample codes, as Hugging Face image processors store them.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


@dataclass
class Recipe:
    """What ``init`` knows about a model so far: from an exporter's files, then the flags on top."""

    labels: list[str] = field(default_factory=list)
    pre: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    name: str | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twopass model", description="Write and check model packs (docs/models.md).")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="write a pack (card.json, labels, model) from an ONNX file")
    init.add_argument("model", nargs="?", type=Path, help="the .onnx file (optional with --from)")
    init.add_argument("--from", dest="from_dir", type=Path, help="a Hugging Face or timm export folder")
    init.add_argument("--labels", type=Path, help="class names: .txt (one per line) or .json (a list)")
    init.add_argument("--mean", type=_floats, help="per channel, R,G,B, in 0-1 units (e.g. 0.485,0.456,0.406)")
    init.add_argument("--std", type=_floats, help="per channel, R,G,B, in 0-1 units (e.g. 0.229,0.224,0.225)")
    init.add_argument("--pixel-scale", type=float, help="pixels are divided by it before mean/std (default 255)")
    init.add_argument("--layout", choices=LAYOUTS, help="input layout (default: read from the graph)")
    init.add_argument("--channel-order", choices=("RGB", "BGR"), help="channel order the model takes (default RGB)")
    init.add_argument("--input-size", type=int, help="side of the square input (default: read from the graph)")
    resize = init.add_mutually_exclusive_group()
    resize.add_argument("--resize-shorter", type=int, help="resize the shorter side to N, then centre-crop")
    resize.add_argument("--crop-fraction", type=float, help="centre crop of this fraction (timm crop_pct)")
    resize.add_argument("--direct", action="store_true", help="resize the whole image to the input size")
    init.add_argument("--interpolation", choices=INTERPOLATIONS, help="resampling filter (default bilinear)")
    init.add_argument("--output", choices=OUTPUT_KINDS, help="what the output holds (default logits)")
    init.add_argument("--threshold", type=float, default=0.5, help="sigmoid: a label's probability cut-off")
    init.add_argument("--name", help="model name (default: the file's name)")
    init.add_argument("--version", default="1", help="model version (default 1)")
    init.add_argument("--out", type=Path, help="pack directory to write (default: ./<name>)")
    check = sub.add_parser("check", help="load a pack, run a warm-up and an image through it, print a summary")
    check.add_argument("pack", help="pack directory (or an .onnx with its card beside it)")
    check.add_argument("--image", type=Path, help="image to classify (default: the bundled cat)")
    check.add_argument("--with", dest="other", help="another pack that must share the label set (fast vs slow)")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == "init":
            pack = init(args)
            out.write(f"wrote {pack}\n")
            return check(str(pack), None, None, out)
        return check(args.pack, args.image, args.other, out)
    except TwopassError as exc:
        sys.stderr.write(f"error: {one_line(str(exc))}\n")
        return EXIT_INVALID


# -- init ---------------------------------------------------------------------------------------


def init(args: argparse.Namespace) -> Path:
    """Write the pack; returns its directory."""
    recipe = Recipe()
    model: Path | None = args.model
    if args.from_dir is not None:
        recipe, found = from_export(args.from_dir)
        model = model or found
    if model is None:
        raise ModelPackError("give the .onnx file, or --from a folder holding one")
    if not model.is_file():
        raise ModelPackError(f"{model}: no such file")
    graph = read_graph(model)
    if args.labels is not None:
        recipe.labels = read_label_file(args.labels)
    if not recipe.labels:
        raise ModelPackError("no labels: give --labels labels.txt (one class name per line, in class-index order)")
    pre = _preprocessing(recipe, graph, args)
    name = args.name or recipe.name or model.stem
    target: Path = args.out or Path(name)
    target.mkdir(parents=True, exist_ok=True)
    if model.resolve() != (target / model.name).resolve():
        shutil.copyfile(model, target / model.name)
    (target / "labels.txt").write_text("\n".join(recipe.labels) + "\n", encoding="utf-8")
    card = ModelCard(
        name=name,
        version=args.version,
        file=model.name,
        sha256=sha256_file(model),
        size_bytes=model.stat().st_size,
        input_name=graph["input_name"],
        output_name=graph["output_name"],
        output=args.output or recipe.output or "logits",
        threshold=args.threshold,
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


def _preprocessing(recipe: Recipe, graph: dict[str, Any], args: argparse.Namespace) -> Preprocessing:
    pre = dict(recipe.pre)
    shape = graph["shape"]
    layout = args.layout or pre.get("layout") or graph["layout"] or "NCHW"
    side = shape[2] if layout == "NCHW" else shape[1] if len(shape) == 4 else None
    size = args.input_size or (side if isinstance(side, int) else None) or pre.get("input_size")
    if not size:
        raise ModelPackError("the graph's input size is not fixed: give --input-size")
    for key, value in (
        ("mean", args.mean),
        ("std", args.std),
        ("pixel_scale", args.pixel_scale),
        ("channel_order", args.channel_order),
        ("interpolation", args.interpolation),
    ):
        if value is not None:
            pre[key] = value
    if args.resize_shorter:
        pre.update(resize="crop", resize_shorter=args.resize_shorter, crop_fraction=0.0)
    elif args.crop_fraction:
        pre.update(resize="crop", crop_fraction=args.crop_fraction, resize_shorter=0)
    elif args.direct:
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


# -- check --------------------------------------------------------------------------------------


def check(location: str, image: Path | None, other: str | None, out: TextIO) -> int:
    """Load the pack as the services do, classify an image, print the summary."""
    from twopass.config import DATA_DIR
    from twopass.models.runtime import Classifier
    from twopass.models.source import resolve

    sample = image or DATA_DIR / "cat.jpg"
    started = time.perf_counter()
    classifier = Classifier(resolve(location), top_k=3)
    pack, card, pre = classifier.pack, classifier.card, classifier.card.preprocessing
    if other is not None:
        check_agreement(pack, load_pack(resolve(other)), roles=("checked", "--with"))
    data = sample.read_bytes()
    t0 = time.perf_counter()
    prediction = classifier.predict(classifier.tensor(data, max_pixels=100_000_000))
    run_ms = (time.perf_counter() - t0) * 1000
    resize = (
        "direct resize"
        if pre.resize == "direct"
        else f"shorter side to {pre.shorter_side}, centre crop {pre.input_size}"
    )
    labels = ", ".join(pack.labels[:5]) + (f", … ({len(pack.labels)} in all)" if len(pack.labels) > 5 else "")
    lines = [
        f"pack         {pack.where}",
        f"model        {card.name} {card.version} ({card.file}, {pack.model_file.stat().st_size} bytes"
        + (", sha256 ok)" if card.sha256 else ", no sha256 in the card)"),
        f"input        {card.input_name} {pre.describe()}",
        f"resize       {resize}, {pre.interpolation}",
        f"normalise    (pixel / {pre.pixel_scale:g} - mean {list(pre.channel_mean)}) / std {list(pre.channel_std)}",
        f"output       {card.output_name} → {card.output}"
        + (f" (threshold {card.threshold:g})" if card.output == "sigmoid" else ""),
        f"labels       {labels}",
        f"load+warm-up {classifier.load_seconds * 1000:.0f} ms on {classifier.providers[0]}",
        f"image        {sample.name}: "
        + ", ".join(f"{p['label']} {p['probability']:.3f}" for p in prediction.top_k())
        + f" ({run_ms:.1f} ms)",
    ]
    if other is not None:
        lines.append(f"agreement    same {len(pack.labels)} labels as {other}")
    lines.append(f"ok           {time.perf_counter() - started:.2f} s")
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected 1 or 3 values (R,G,B), got {len(values)}")
    return values * 3 if len(values) == 1 else values

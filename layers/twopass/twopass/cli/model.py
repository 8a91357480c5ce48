"""``twopass model init`` and ``twopass model check``: write a model pack from an ONNX file, prove it loads.

``init`` reads the graph (input name, shape, layout where the channels tell, output width) and takes
the rest from flags, or with ``--from DIR`` from what a Hugging Face or timm export writes beside the
model (:mod:`twopass.models.recipe`). ``check`` loads the pack as the API and the worker do, runs a
warm-up and a real image through it and prints a one-screen summary; any problem is one line and a
non-zero exit. Both need the server packages, imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import TextIO

from twopass.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Command, Subparsers, error, missing, runs
from twopass.exceptions import TwopassError
from twopass.models.card import INTERPOLATIONS, LAYOUTS, OUTPUT_KINDS

#: What loading and running a pack takes.
MODEL_NEEDS = ("onnxruntime", "numpy", "PIL")


def register(sub: Subparsers[argparse.ArgumentParser], common_options: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "model",
        help="write a model pack from your ONNX file and check it loads (`twopass model --help`)",
        description="Write and check model packs (docs/models.md).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_init(actions, parser)
    check = actions.add_parser("check", help="load a pack, run a warm-up and an image through it, print a summary")
    check.add_argument("pack", help="pack directory (or an .onnx with its card beside it)")
    check.add_argument("--image", type=Path, help="image to classify (default: the bundled cat)")
    check.add_argument("--with", dest="other", help="another pack that must share the label set (fast vs slow)")
    runs(check, Command(run_check, usage=parser))


def _add_init(actions: Subparsers[argparse.ArgumentParser], model: argparse.ArgumentParser) -> None:
    init = actions.add_parser("init", help="write a pack (card.json, labels, model) from an ONNX file")
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
    runs(init, Command(run_init, usage=model))


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected 1 or 3 values (R,G,B), got {len(values)}")
    return values * 3 if len(values) == 1 else values


def _needs() -> bool:
    """Whether the server packages are here; says which are missing when not."""
    absent = missing(MODEL_NEEDS)
    if absent:
        error(f"`twopass model` needs the server packages ({', '.join(absent)} missing): pip install -e '.[serve]'")
    return not absent


def run_init(args: argparse.Namespace) -> int:
    if not _needs():
        return EXIT_USAGE
    from twopass.models.recipe import InitOptions, write_pack

    options = InitOptions(**{f.name: getattr(args, f.name) for f in fields(InitOptions)})
    try:
        pack = write_pack(options)
        sys.stdout.write(f"wrote {pack}\n")
        return check(str(pack), None, None, sys.stdout)
    except TwopassError as exc:
        return _refused(exc)


def run_check(args: argparse.Namespace) -> int:
    if not _needs():
        return EXIT_USAGE
    try:
        return check(args.pack, args.image, args.other, sys.stdout)
    except TwopassError as exc:
        return _refused(exc)


def _refused(exc: TwopassError) -> int:
    from twopass.models.pack import one_line

    sys.stderr.write(f"error: {one_line(str(exc))}\n")
    return EXIT_FAILED


def check(location: str, image: Path | None, other: str | None, out: TextIO) -> int:
    """Load the pack as the services do, classify an image, print the summary."""
    from twopass.config import DATA_DIR
    from twopass.models.pack import check_agreement, load_pack
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

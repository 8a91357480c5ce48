"""``twopass calibrate``: choose the cascade's confidence threshold from both models' answers on your images.

This module reads the arguments, loads the two model packs and prints; the sweep, the views and the
report are :mod:`twopass.tools.calibrate`'s. The models need the server packages (numpy, onnxruntime,
Pillow: ``pip install -e '.[serve]'`` in a clone), imported only when the command runs.

    twopass calibrate photos/ --augment --target-agreement 0.99
    twopass calibrate photos/ --json > calibration.json
    twopass calibrate photos/ --plot calibration.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from twopass.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Command, Subparsers, error, missing, runs
from twopass.exceptions import TwopassError

if TYPE_CHECKING:
    from twopass.config import Settings
    from twopass.models.runtime import Classifier
    from twopass.tools.calibrate import Calibration

#: What calibration runs: both models on the images, with the service's own decoding.
CALIBRATE_NEEDS: Final = ("onnxruntime", "numpy", "PIL")
DEFAULT_TARGET: Final = 0.99
DEFAULT_STEP: Final = 0.05


class _RefusedError(TwopassError):
    """Why the command stops before any image is classified: the message and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def register(sub: Subparsers[argparse.ArgumentParser], common_options: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "calibrate",
        help="choose the cascade's confidence threshold from both models' answers on your images "
        "(needs the server extras; `twopass calibrate --help`)",
        description="Run the fast and the slow model on your images and choose the cascade's confidence "
        "threshold: for each threshold, the share of slow passes saved and the agreement of the cascade's "
        "answer with the slow model's top-1. Needs the server packages (numpy, onnxruntime, Pillow).",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders (walked)")
    parser.add_argument(
        "--target-agreement",
        type=_probability,
        default=DEFAULT_TARGET,
        help=f"the agreement the recommended threshold must reach (default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--labels-from-folders",
        action="store_true",
        help="each image's parent folder names its class in the model pack's labels (tiger_cat/, espresso/): "
        "adds accuracy",
    )
    parser.add_argument(
        "--augment", action="store_true", help="also classify crops, a mirror image and smaller scales of each image"
    )
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON (for machines)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also draw the curves into this PNG file")
    parser.add_argument(
        "--step",
        type=_probability,
        default=DEFAULT_STEP,
        help=f"thresholds shown in the table (default {DEFAULT_STEP})",
    )
    parser.add_argument(
        "--fast-model", help="fast model pack directory or .onnx (default: TWOPASS_FAST_MODEL or the bundled one)"
    )
    parser.add_argument(
        "--slow-model", help="slow model pack directory or .onnx (default: TWOPASS_SLOW_MODEL or the bundled one)"
    )
    runs(parser, Command(run, usage=parser))


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    absent = missing(CALIBRATE_NEEDS)
    if absent:
        error(
            f"`twopass calibrate` needs the server packages ({', '.join(absent)} missing): in a clone of the "
            "repository, pip install -e '.[serve]'"
        )
        return EXIT_USAGE
    from twopass.tools.calibrate import plot, report

    try:
        result = _calibrate(args)
    except _RefusedError as exc:
        print(f"twopass calibrate: error: {exc}", file=sys.stderr)
        return exc.code
    if args.plot is not None:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        print(report(result, args.step))
        if args.plot is not None:
            print(f"Plot: {args.plot}")
    return EXIT_OK


def _calibrate(args: argparse.Namespace) -> Calibration:
    """Both models on the images the arguments name, swept; :class:`_RefusedError` when there is nothing to run."""
    from twopass.config import Settings
    from twopass.tools.calibrate import calibrate, collect, observe, unknown_folders

    try:
        files = collect(args.paths)
    except FileNotFoundError as exc:
        raise _RefusedError(str(exc), EXIT_USAGE) from None
    if not files:
        raise _RefusedError("no image files in the given paths", EXIT_USAGE)
    settings = Settings.from_env()
    fast, slow = _models(args, settings)
    if args.labels_from_folders:
        unknown = unknown_folders(files, fast.labels)
        if unknown:
            # Accuracy against a folder that names no class of the pack would silently count as wrong.
            raise _RefusedError(
                f"folder(s) {', '.join(unknown[:5])} name no class of the model pack "
                f"({len(fast.labels)} labels, e.g. {', '.join(fast.labels[:3])})",
                EXIT_USAGE,
            )
    observations = observe(
        files,
        fast,
        slow,
        augment=args.augment,
        labels_from_folders=args.labels_from_folders,
        max_pixels=settings.max_image_pixels,
        progress=_progress,
    )
    if not observations:
        raise _RefusedError("none of the images could be decoded", EXIT_FAILED)
    return calibrate(observations, len(files), args.target_agreement, fast, slow)


def _models(args: argparse.Namespace, settings: Settings) -> tuple[Classifier, Classifier]:
    """The fast and the slow model as the services load them; they must share their labels."""
    from twopass.exceptions import ModelLoadError
    from twopass.models.pack import check_agreement
    from twopass.models.runtime import Classifier

    try:
        fast = Classifier.from_location(args.fast_model or settings.fast_model, providers=settings.providers, top_k=1)
        slow = Classifier.from_location(args.slow_model or settings.slow_model, providers=settings.providers, top_k=1)
        check_agreement(fast.pack, slow.pack)
    except ModelLoadError as exc:
        raise _RefusedError(str(exc), EXIT_FAILED) from None
    return fast, slow


def _progress(text: str) -> None:
    if sys.stderr.isatty() or text.startswith("skipped"):
        print(text, file=sys.stderr)

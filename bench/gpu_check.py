"""The GPU path in one command: ``python bench/gpu_check.py`` (from a checkout, in any environment with
the worker's packages: the gpu-slim image's, or ``.venv`` with onnxruntime-gpu).

Prints, in under five minutes on a GPU machine (every timing is bounded by ``--seconds``):

* the provider the slow model got when CUDA is required, the device, and the CUDA / cuDNN versions found;
* fp32 vs fp16: top-1 agreement on the bundled photos and their augmented views, throughput;
* throughput by batch size, twopass's session (its CUDA options) against a raw onnxruntime session
  with the provider's defaults, on the same ready tensors;
* a batch's latency (p50 / p99) at the worker's batch size, decode and top-k included.

It runs on a machine without a GPU too (tests run it so): it says so and the figures are CPU figures.
``bench/run.py --sections gpu`` calls :func:`run` for the fp16 agreement in the benchmark report.
"""

from __future__ import annotations

import argparse
import functools
import io
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if not __package__:  # run as a script: the checkout's library on the path
    sys.path[:0] = [str(REPO / "layers" / "twopass"), str(REPO)]
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402

from twopass.config import Settings  # noqa: E402
from twopass.exceptions import ProviderUnavailableError  # noqa: E402
from twopass.models import cuda, runtime  # noqa: E402
from twopass.models.runtime import Classifier  # noqa: E402
from twopass.worker.preflight import device_name  # noqa: E402

FP16 = "efficientnet-lite2-fp16.onnx"
CPU = "CPUExecutionProvider"
#: Real photos: the test photos and the bundled cat.
PHOTO_PATHS = (*sorted((REPO / "tests" / "data").glob("*.jpg")), REPO / "layers/twopass/twopass/data/cat.jpg")
MAX_PIXELS = 40_000_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def augmented_views() -> Iterator[bytes]:
    """Each distinct photo flipped, cropped, rotated and rescaled, re-encoded as JPEG (quality 90)."""
    seen: set[bytes] = set()
    for path in PHOTO_PATHS:
        raw = path.read_bytes()
        if raw in seen:
            continue
        seen.add(raw)
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        w, h = image.size
        variants = [
            image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            image.transpose(Image.Transpose.ROTATE_90),
            image.crop((int(w * 0.15), int(h * 0.15), int(w * 0.85), int(h * 0.85))),
            image.resize((w // 2, h // 2), Image.Resampling.BILINEAR),
            *(image.crop((x, y, x + int(w * 0.8), y + int(h * 0.8))) for x in (0, w - int(w * 0.8))
              for y in (0, h - int(h * 0.8))),
        ]  # fmt: skip
        for variant in variants:
            out = io.BytesIO()
            variant.save(out, "JPEG", quality=90)
            yield out.getvalue()


# ---------------------------------------------------------------- sessions


def load(path: Path, gpu: bool) -> Classifier:
    """The model as the worker loads it: CUDA required where there is one, else the CPU."""
    return Classifier(path, providers=(cuda.CUDA, CPU) if gpu else (CPU,))


def raw_session(path: Path, gpu: bool) -> ort.InferenceSession:
    """A plain onnxruntime session with the provider's default options: the baseline."""
    return ort.InferenceSession(str(path), providers=[cuda.CUDA, CPU] if gpu else [CPU])


def timed_runs(step: Callable[[], object], seconds: float, minimum: int = 3) -> list[float]:
    """Seconds per call of ``step``, for about ``seconds`` (at least ``minimum`` calls), after one warm-up."""
    step()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < minimum or time.perf_counter() < deadline:
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def batch_of(tensors: Sequence[np.ndarray], size: int) -> np.ndarray:
    return np.stack(list(itertools.islice(itertools.cycle(tensors), size)))


# ---------------------------------------------------------------- the measurements


def agreement(fp32: Classifier, fp16: Classifier) -> dict[str, Any]:
    """fp16 against fp32 on the photos and their augmented views (top-1, logits)."""
    rows, max_diff, agree, top5 = [], 0.0, 0, 0
    for path in PHOTO_PATHS:
        x = fp32.tensor(path.read_bytes(), max_pixels=MAX_PIXELS)[None]
        a, b = fp32.logits(x)[0], fp16.logits(x)[0]
        pa, pb = fp32.decode(a[None])[0], fp16.decode(b[None])[0]
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        agree += pa.class_ids[0] == pb.class_ids[0]
        top5 += pb.class_ids[0] in pa.class_ids
        rows.append({"photo": path.name, "fp32": pa.label, "fp16": pb.label, "p32": round(pa.probability, 4),
                     "p16": round(pb.probability, 4)})  # fmt: skip
    views = list(augmented_views())
    view_agree = 0
    for data in views:
        x = fp32.tensor(data, max_pixels=MAX_PIXELS)[None]
        a, b = fp32.logits(x)[0], fp16.logits(x)[0]
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        view_agree += int(np.argmax(a)) == int(np.argmax(b))
    return {
        "photos": len(rows),
        "top1_agreement": round(agree / len(rows), 4),
        "fp16_top1_in_fp32_top5": round(top5 / len(rows), 4),
        "max_abs_logit_diff": round(max_diff, 4),
        "views": len(views),
        "views_top1_agreement": round(view_agree / len(views), 4),
        "per_photo": rows,
    }


def throughput(
    path: Path, gpu: bool, tensors: Sequence[np.ndarray], batches: Sequence[int], seconds: float
) -> list[dict[str, Any]]:
    """Images/s by batch size: twopass's session and a raw one, alternating per batch size."""
    model = load(path, gpu)
    raw = raw_session(path, gpu)
    name_in, name_out = model.card.input_name, model.card.output_name
    rows = []
    for size in batches:
        batch = batch_of(tensors, size)
        ours = timed_runs(functools.partial(model.logits, batch), seconds)
        theirs = timed_runs(functools.partial(raw.run, [name_out], {name_in: batch}), seconds)
        row = {
            "batch": size,
            "twopass_images_per_s": round(size / statistics.median(ours), 1),
            "raw_images_per_s": round(size / statistics.median(theirs), 1),
        }
        row["ratio"] = round(row["twopass_images_per_s"] / row["raw_images_per_s"], 3)
        rows.append(row)
    return rows


def batch_latency(model: Classifier, tensors: Sequence[np.ndarray], size: int, seconds: float) -> dict[str, Any]:
    """One batch through ``predict_batch`` (inference, softmax, top-k), as the worker's model thread runs it."""
    batch = batch_of(tensors, size)
    times = timed_runs(lambda: model.predict_batch(batch), seconds, minimum=20)
    ms = [t * 1000 for t in times]
    return {
        "batch": size,
        "runs": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
    }


def check(batches: Sequence[int], seconds: float, latency_batch: int) -> dict[str, Any]:
    """Everything :func:`main` prints, as one dict."""
    host = cuda.probe()
    fp32_path = Path(Settings().slow_model)
    fp16_path = fp32_path.with_name(FP16)
    gpu = cuda.CUDA in ort.get_available_providers()
    try:
        fp32 = load(fp32_path, gpu)
    except ProviderUnavailableError as exc:  # a GPU build that cannot start CUDA here: say why, go on on the CPU
        log(f"CUDA is not usable here: {exc}")
        gpu, fp32 = False, load(fp32_path, False)
    provider = fp32.providers[0]
    out: dict[str, Any] = {
        "gpu": gpu,
        "provider": provider,
        "device": device_name(provider),
        "versions": host.describe(),
        "cuda_provider_options": dict(runtime.CUDA_PROVIDER_OPTIONS) if gpu else None,
    }
    tensors = [fp32.tensor(p.read_bytes(), max_pixels=MAX_PIXELS) for p in PHOTO_PATHS]
    out["throughput"] = {"fp32": throughput(fp32_path, gpu, tensors, batches, seconds)}
    if fp16_path.exists():
        fp16 = load(fp16_path, gpu)
        out["fp16"] = agreement(fp32, fp16)
        out["throughput"]["fp16"] = throughput(fp16_path, gpu, tensors, batches, seconds)
    out["latency"] = {"fp32": batch_latency(fp32, tensors, latency_batch, seconds * 2)}
    return out


def report(result: dict[str, Any]) -> str:
    lines = []
    if not result["gpu"]:
        lines.append("NO GPU: onnxruntime has no usable CUDA provider here; every figure below is a CPU figure.")
    lines.append(f"provider: {result['provider']}   device: {result['device']}")
    lines.append("versions: " + ", ".join(f"{k} {v or 'not found'}" for k, v in result["versions"].items()))
    if "fp16" in result:
        f = result["fp16"]
        lines.append(
            f"fp16 vs fp32: top-1 agreement {f['top1_agreement']:.0%} of {f['photos']} photos, "
            f"{f['views_top1_agreement']:.0%} of {f['views']} views; max |Δlogit| {f['max_abs_logit_diff']:.4f}"
        )
    for precision, rows in result["throughput"].items():
        lines.append(f"{precision} images/s by batch: twopass / raw onnxruntime ({result['provider']})")
        for row in rows:
            lines.append(
                f"  batch {row['batch']:>3}: {row['twopass_images_per_s']:>9.1f} / {row['raw_images_per_s']:>9.1f}"
                f"  (x{row['ratio']:.2f})"
            )
    for precision, lat in result["latency"].items():
        lines.append(
            f"{precision} batch of {lat['batch']}: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms "
            f"({lat['runs']} runs)"
        )
    return "\n".join(lines)


def run(repeats: int = 3, seconds: float | None = None, latency_batch: int = 8) -> dict[str, Any]:
    """bench/run.py's ``gpu`` section: the fp16 check and throughput at batch 8, on whatever this host has.

    Each timing lasts ``seconds`` (default: 1 s plus half a second per repeat); the latency is taken
    at ``latency_batch``.
    """
    seconds = 1.0 + 0.5 * repeats if seconds is None else seconds
    result = check((1, 8), seconds, latency_batch)
    eight = {p: next(r for r in rows if r["batch"] == 8) for p, rows in result["throughput"].items()}
    if "fp16" in result:
        result["fp16"] = {
            "present": True,
            **result["fp16"],
            "cpu_images_per_s_batch8": {p: row["twopass_images_per_s"] for p, row in eight.items()},
            "note": "on CPU fp16 ops without a kernel run in fp32 between casts: fp16 is for the CUDA provider",
        }
    else:
        result["fp16"] = {"present": False}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,4,8,16,32", help="batch sizes for throughput (default 1,4,8,16,32)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3; 5 minutes in all)")
    parser.add_argument(
        "--latency-batch", type=int, default=32, help="batch size of the p99 (default 32, the template's)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = check([int(b) for b in args.batches.split(",")], args.seconds, args.latency_batch)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(report(result))
    print(f"({result['seconds']} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU path checks that need no GPU: provider options, and fp16 vs fp32 agreement on the CPU."""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from bench.common import PHOTO_PATHS, log, median
from twopass.config import Settings
from twopass.models import runtime
from twopass.models.runtime import Classifier

FP16 = "efficientnet-lite2-fp16.onnx"


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


def run(repeats: int = 3) -> dict[str, Any]:
    result: dict[str, Any] = {"available_providers": ort.get_available_providers()}
    chosen = runtime.available_providers(("CUDAExecutionProvider", "CPUExecutionProvider"))
    result["providers_on_this_host"] = [p if isinstance(p, str) else p[0] for p in chosen]
    options = getattr(runtime, "CUDA_PROVIDER_OPTIONS", None)
    result["cuda_provider_options"] = dict(options) if options else None

    fp32_path = Path(Settings().slow_model)
    fp16_path = fp32_path.with_name(FP16)
    if not fp16_path.exists():
        result["fp16"] = {"present": False}
        return result
    fp32 = Classifier(fp32_path, providers=("CPUExecutionProvider",))
    fp16 = Classifier(fp16_path, providers=("CPUExecutionProvider",))
    rows, max_diff, agree, top5 = [], 0.0, 0, 0
    tensors = {p.name: fp32.tensor(p.read_bytes(), max_pixels=40_000_000) for p in PHOTO_PATHS}
    for name, x in tensors.items():
        a, b = fp32.logits(x[None])[0], fp16.logits(x[None])[0]
        pa, pb = fp32.decode(a[None])[0], fp16.decode(b[None])[0]
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        agree += pa.class_ids[0] == pb.class_ids[0]
        top5 += pb.class_ids[0] in pa.class_ids
        rows.append({"photo": name, "fp32": pa.label, "fp16": pb.label, "p32": round(pa.probability, 4),
                     "p16": round(pb.probability, 4)})  # fmt: skip
    views = list(augmented_views())
    view_agree = 0
    for data in views:
        x = fp32.tensor(data, max_pixels=40_000_000)[None]
        a, b = fp32.logits(x)[0], fp16.logits(x)[0]
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        view_agree += int(np.argmax(a)) == int(np.argmax(b))
    batch = np.stack(list(itertools.islice(itertools.cycle(tensors.values()), 8)))

    def rate(c: Classifier) -> float:
        c.logits(batch)
        t0 = time.perf_counter()
        for _ in range(2):
            c.logits(batch)
        return 16 / (time.perf_counter() - t0)

    speeds = [(rate(fp32), rate(fp16)) for _ in range(repeats)]
    result["fp16"] = {
        "present": True,
        "photos": len(rows),
        "top1_agreement": round(agree / len(rows), 4),
        "fp16_top1_in_fp32_top5": round(top5 / len(rows), 4),
        "max_abs_logit_diff": round(max_diff, 4),
        "views": len(views),
        "views_top1_agreement": round(view_agree / len(views), 4),
        "per_photo": rows,
        "cpu_images_per_s_batch8": {
            "fp32": round(median([s[0] for s in speeds]), 2),
            "fp16": round(median([s[1] for s in speeds]), 2),
        },
        "note": "on CPU fp16 ops without a kernel run in fp32 between casts: fp16 is for the CUDA provider",
    }
    log(
        f"  fp16 vs fp32: top-1 agreement {agree}/{len(rows)} photos, {view_agree}/{len(views)} views, "
        f"max |Δlogit| {max_diff:.4f}"
    )
    return result

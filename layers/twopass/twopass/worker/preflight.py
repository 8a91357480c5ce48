"""``python -m twopass.worker --preflight``: can this container serve, and on what?

Loads the slow model exactly as the worker would (same settings, same providers, the CUDA
libraries preloaded), runs one warm-up batch of ``max_batch_size`` images, and prints the provider
and device it got, the CUDA and cuDNN versions found and the timings. The exit status is non-zero
when a required provider is missing (the line says what is missing) or the model does not load.
It needs no queue or table, so the image build and the container's health check both run it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from twopass.config import Settings
from twopass.exceptions import ModelLoadError
from twopass.models import cuda
from twopass.models.runtime import provider_names
from twopass.worker.models import load_slow

#: Exit statuses: the model loaded where asked (or fallback is allowed), or not.
OK, FAILED = 0, 1


def device_name(provider: str) -> str:
    """What the session runs on, in words: the GPU's model, or the CPU's."""
    if provider == cuda.CUDA:
        with contextlib.suppress(OSError):
            for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
                for line in info.read_text().splitlines():
                    if line.startswith("Model:"):
                        return line.split(":", 1)[1].strip()
        return "NVIDIA GPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU ({line.split(':', 1)[1].strip()})"
    return "CPU"


def _print(out: TextIO, key: str, value: object) -> None:
    print(f"{key + ':':<20} {value}", file=out, flush=True)


def preflight(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Load, warm up, report; the process's exit status."""
    host = cuda.probe() if cuda.CUDA in provider_names(settings.providers) else None
    _print(out, "model file", settings.slow_model)
    _print(
        out, "providers asked", ",".join(settings.providers) + (" (CPU fallback allowed)" * settings.allow_cpu_fallback)
    )
    for key, value in (host.describe() if host else {"onnxruntime": cuda.package()}).items():
        _print(out, key, value if value is not None else "not found")
    started = time.perf_counter()
    try:
        classifier = load_slow(settings)
    except ModelLoadError as exc:
        print(f"preflight failed: {exc}", file=sys.stderr, flush=True)
        return FAILED
    loaded = time.perf_counter() - started
    provider = classifier.providers[0]
    _print(out, "model", f"{classifier.name} {classifier.card.version}")
    _print(
        out,
        "provider",
        provider + ("" if classifier.serving_as_asked else f" (asked for {classifier.requested_provider})"),
    )
    _print(out, "device", device_name(provider))
    batch = np.zeros(classifier.card.preprocessing.input_shape(settings.max_batch_size), dtype=np.float32)
    started = time.perf_counter()
    classifier.predict_batch(batch)
    warm = time.perf_counter() - started
    _print(out, "load", f"{loaded:.3f} s (first run included)")
    _print(out, "warm-up batch", f"{settings.max_batch_size} images in {warm * 1000:.1f} ms")
    return OK

"""``python -m twopass.worker.linkcheck``: every library the CUDA provider needs resolves, but the driver's.

A GPU image is built where no GPU is: the CUDA provider cannot start there, yet every library it
links (the CUDA runtime, cuBLAS, cuRAND) and every library of the ``nvidia-*`` wheels (cuDNN's
engines, cuFFT, nvrtc) must resolve, or the task would fall back to the CPU once deployed. Only the
NVIDIA driver's ``libcuda.so.1`` may be missing: the container toolkit mounts it from the host. The
GPU stages of the Dockerfile run this, and ``tests/artefacts`` runs it on the gpu-slim target's
wheels in a clean environment.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from twopass.models import cuda


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m twopass.worker.linkcheck",
        description="Check that onnxruntime's CUDA provider and the nvidia-* wheels' libraries link; "
        f"exit 1 if anything but {cuda.DRIVER_LIBRARY} (or what --allow names) is missing.",
    )
    parser.add_argument(
        "--allow", action="append", default=[], metavar="SONAME", help="another library that may be missing"
    )
    parser.add_argument(
        "--from-wheels",
        action="store_true",
        help="fail when a CUDA or cuDNN library resolves anywhere but the nvidia-* wheels (the gpu-slim image)",
    )
    args = parser.parse_args(argv)
    provider = cuda.capi_dir() / cuda.PROVIDER_LIBRARY
    if cuda.build_cuda_version() is None or not provider.is_file():
        print(f"link check failed: {cuda.package()} has no CUDA provider ({provider.name})", file=sys.stderr)
        return 1
    report = cuda.link_check()
    allowed = [cuda.DRIVER_LIBRARY, *args.allow]
    print(f"{cuda.package()}, built for CUDA {cuda.build_cuda_version()}: {len(report.checked)} libraries checked")
    for name, needed_by in report.missing.items():
        verdict = "allowed" if name in allowed else "MISSING"
        print(f"  {name}: not found ({verdict}; needed by {', '.join(needed_by)})")
    elsewhere = report.outside(cuda.wheel_roots())
    print(f"  CUDA / cuDNN libraries linked: {len(report.resolved) - len(elsewhere)} from the nvidia-* wheels, "
          f"{len(elsewhere)} from elsewhere{': ' if elsewhere else ''}"
          + ", ".join(f"{k} ({v.parent})" for k, v in elsewhere.items()))  # fmt: skip
    unexpected = report.unexpected(allowed)
    if unexpected:
        print(f"link check failed: {', '.join(unexpected)} not found", file=sys.stderr)
        return 1
    if args.from_wheels and (elsewhere or not report.resolved):
        print(f"link check failed: {', '.join(elsewhere) or 'nothing'} linked from outside the wheels", file=sys.stderr)
        return 1
    print("link check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

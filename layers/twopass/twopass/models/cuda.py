"""What a CUDA session needs and what this host has, and why the CUDA provider did not load.

onnxruntime falls back to the CPU without a word when its CUDA provider cannot load (a missing CUDA
library, no NVIDIA driver, a driver too old for the wheel's CUDA major), while
``get_available_providers()`` still lists CUDA. This module names the cause in one line, finds the
versions a preflight prints, loads the CUDA and cuDNN libraries the ``nvidia-*`` wheels carry
(``onnxruntime.preload_dlls``), and checks that every library the CUDA provider links resolves.

Only the standard library and onnxruntime: it runs in the worker image, at build time included.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
#: The NVIDIA driver's own library: no wheel or image carries it; the container toolkit mounts the host's.
DRIVER_LIBRARY = "libcuda.so.1"
#: Oldest Linux NVIDIA driver for each CUDA major (NVIDIA's CUDA release notes, minor version compatibility).
DRIVER_FLOOR = {11: 450, 12: 525, 13: 580}
#: onnxruntime's CUDA provider, beside its other libraries in ``onnxruntime/capi``.
PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"
_NOT_FOUND = re.compile(r"^\s*(\S+) => not found", re.MULTILINE)
_FOUND = re.compile(r"^\s*(\S+) => (/\S+)", re.MULTILINE)
#: Libraries of the CUDA toolkit and cuDNN (what the nvidia-* wheels or a CUDA base image provide).
_CUDA_FAMILY = re.compile(r"^lib(cudart|cublas|cublasLt|curand|cufft|nvrtc|nvJitLink|cudnn\w*)\.so")
_MISSING = re.compile(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file")


def build_cuda_version() -> str | None:
    """The CUDA version this onnxruntime build was made for (``"13.0"``); None for a CPU build."""
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return None
    version = getattr(info, "cuda_version", None)
    return str(version) if version else None


def major(version: str | None) -> int | None:
    """``"13.0"`` → 13."""
    if not version:
        return None
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def package() -> str:
    """``onnxruntime-gpu 1.31.1`` or ``onnxruntime 1.32.0``: which build is installed."""
    try:
        from onnxruntime.capi import build_and_package_info as info

        name = str(getattr(info, "package_name", "onnxruntime"))
    except ImportError:
        name = "onnxruntime"
    return f"{name} {ort.__version__}"


def capi_dir() -> Path:
    return Path(ort.__file__).parent / "capi"


# ---------------------------------------------------------------- loading the libraries


def nvidia_wheels() -> bool:
    """Whether the CUDA / cuDNN ``nvidia-*`` wheels are installed (the gpu-slim image)."""
    return importlib.util.find_spec("nvidia") is not None


@cache
def preload() -> str:
    """Load the CUDA and cuDNN libraries of the ``nvidia-*`` wheels into this process, once, so the CUDA
    provider finds them by name; what onnxruntime printed about it (empty when all loaded).

    Nothing to do (and nothing done) without the wheels: the ``gpu`` image has the libraries on the
    loader's path already.
    """
    preload_dlls = getattr(ort, "preload_dlls", None)
    if preload_dlls is None or not nvidia_wheels() or build_cuda_version() is None:
        return ""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # it prints its failures; callers decide what to show
        preload_dlls()
    return out.getvalue().strip()


def loaded_libraries() -> dict[str, Path]:
    """Shared libraries mapped into this process, by file name."""
    found: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split(maxsplit=5)[-1]
            if ".so" in path and path.startswith("/"):
                found.setdefault(Path(path).name, Path(path))
    return found


def first_missing_library(library: Path) -> str | None:
    """The library the loader could not find when loading ``library`` (None if it loads)."""
    try:
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        found = _MISSING.search(str(exc))
        return found.group(1) if found else str(exc)
    return None


# ---------------------------------------------------------------- what this host has


def _read_version(library: str, symbol: str) -> int | None:
    """An ``int *`` version getter (``cudaRuntimeGetVersion``…) called from ``library``, if both load."""
    try:
        lib = ctypes.CDLL(library)
        value = ctypes.c_int(0)
        status = getattr(lib, symbol)(ctypes.byref(value))
    except (OSError, AttributeError):
        return None
    return value.value if status == 0 else None


def _cuda_version(number: int | None) -> str | None:
    return None if not number else f"{number // 1000}.{number % 1000 // 10}"


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version (``580.65.06``), from the proc file the driver writes."""
    with contextlib.suppress(OSError):
        text = Path("/proc/driver/nvidia/version").read_text()
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", text)
        if found:
            return found.group(1)
    return None


def _cudnn_version() -> str | None:
    for name in ("libcudnn.so.9", "libcudnn.so.8"):
        try:
            number = int(ctypes.CDLL(name).cudnnGetVersion())
        except (OSError, AttributeError):
            continue
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return None


@dataclass(frozen=True)
class CudaHost:
    """The CUDA stack as this process sees it; None where a piece is absent."""

    onnxruntime: str
    build_cuda: str | None
    driver: str | None
    driver_cuda: str | None
    runtime_cuda: str | None
    cudnn: str | None
    preload_output: str = field(default="", repr=False)

    def describe(self) -> dict[str, str | None]:
        return {
            "onnxruntime": self.onnxruntime,
            "built for CUDA": self.build_cuda,
            "NVIDIA driver": self.driver,
            "driver's CUDA": self.driver_cuda,
            "CUDA runtime": self.runtime_cuda,
            "cuDNN": self.cudnn,
        }


def probe() -> CudaHost:
    """Load what can be loaded and read each version (never raises)."""
    build = build_cuda_version()
    preloaded = preload()
    wanted = major(build)
    runtime = _read_version(f"libcudart.so.{wanted}", "cudaRuntimeGetVersion") if wanted else None
    return CudaHost(
        onnxruntime=package(),
        build_cuda=build,
        driver=driver_version(),
        driver_cuda=_cuda_version(_read_version(DRIVER_LIBRARY, "cuDriverGetVersion")),
        runtime_cuda=_cuda_version(runtime),
        cudnn=_cudnn_version(),
        preload_output=preloaded,
    )


# ---------------------------------------------------------------- why CUDA did not load


def why_unavailable(provider: str, serving: str) -> str:
    """One line: the provider asked for, where the session runs instead, and what is missing."""
    head = f"{provider} was required but the session runs on {serving}"
    if provider != CUDA:
        return f"{head}: {package()} offers {', '.join(ort.get_available_providers())}"
    build = build_cuda_version()
    if build is None:
        return f"{head}: {package()} is a CPU build, with no CUDA provider (install onnxruntime-gpu)"
    wanted = major(build)
    floor = DRIVER_FLOOR.get(wanted or 0)
    needs = f"{package()} needs CUDA {wanted}" + (f" (NVIDIA driver >= {floor})" if floor else "")
    preload()
    missing = first_missing_library(capi_dir() / PROVIDER_LIBRARY)
    if missing == DRIVER_LIBRARY:
        return f"{head}: no NVIDIA driver ({DRIVER_LIBRARY} not found; no GPU given to this container?); {needs}"
    if missing:
        return f"{head}: {missing} not found; {needs} with its CUDA {wanted} and cuDNN libraries"
    driver = driver_version()
    driver_major = int(driver.split(".")[0]) if driver and driver.split(".")[0].isdigit() else None
    if driver_major is not None and floor is not None and driver_major < floor:
        return f"{head}: NVIDIA driver {driver} is too old; {needs}"
    return f"{head}: the CUDA provider loaded but did not start (no usable GPU?); {needs}"


# ---------------------------------------------------------------- the link check


@dataclass(frozen=True)
class LinkReport:
    """Which libraries ``ldd`` could not resolve, and which files asked for each."""

    checked: tuple[Path, ...]
    missing: Mapping[str, tuple[str, ...]]
    search_path: tuple[str, ...]
    #: Where each CUDA / cuDNN library linked by name was found.
    resolved: Mapping[str, Path] = field(default_factory=dict)

    def unexpected(self, allowed: Iterable[str] = (DRIVER_LIBRARY,)) -> dict[str, tuple[str, ...]]:
        return {lib: who for lib, who in self.missing.items() if lib not in set(allowed)}

    def outside(self, roots: Iterable[Path]) -> dict[str, Path]:
        """CUDA / cuDNN libraries resolved somewhere other than under ``roots`` (the system's, say)."""
        bases = [r.resolve() for r in roots]
        return {k: v for k, v in self.resolved.items() if not any(v.resolve().is_relative_to(b) for b in bases)}


def wheel_roots() -> list[Path]:
    """Where the ``nvidia-*`` wheels are installed (the ``nvidia`` namespace package's directories)."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(root) for root in spec.submodule_search_locations]


def wheel_libraries() -> list[Path]:
    """Every shared library the ``nvidia-*`` wheels installed."""
    return sorted(p for root in wheel_roots() for p in root.rglob("*.so*") if p.is_file())


def link_check() -> LinkReport:
    """Resolve what the CUDA provider and every wheel library link, as the worker will load them.

    The wheels' libraries are found through ``preload_dlls`` at run time (loaded by path, then by
    name); ``ldd`` is given their directories instead, plus whatever the process already mapped.
    """
    preload()
    libraries = [capi_dir() / PROVIDER_LIBRARY, *wheel_libraries()]
    dirs = dict.fromkeys(str(p.parent) for p in (*libraries, *loaded_libraries().values()))
    search = tuple(d for d in dirs if d)
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [*search, os.environ.get("LD_LIBRARY_PATH")]))}
    missing: dict[str, list[str]] = {}
    resolved: dict[str, Path] = {}
    for library in libraries:
        out = subprocess.run(["ldd", str(library)], capture_output=True, text=True, env=env, check=False).stdout
        for name in _NOT_FOUND.findall(out):
            missing.setdefault(name, []).append(library.name)
        resolved.update((name, Path(path)) for name, path in _FOUND.findall(out) if _CUDA_FAMILY.match(name))
    return LinkReport(
        tuple(libraries), {k: tuple(v) for k, v in sorted(missing.items())}, search, dict(sorted(resolved.items()))
    )

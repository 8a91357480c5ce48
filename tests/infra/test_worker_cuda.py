"""One CUDA major across the GPU worker (offline): the onnxruntime-gpu releases pyproject.toml allows,
the pinned wheels, the CUDA base image, the gpu-slim image's NVIDIA_REQUIRE_CUDA and the driver the
template's AMI must have. A release built for another CUDA major must not resolve, and a newer release
enters only once its CUDA major is added to KNOWN_RELEASES below (from its wheel's METADATA: the
``cuda`` extra's ``nvidia-cuda-runtime`` pin). tests/artefacts/test_gpu_slim.py checks the installed
wheel itself (``build_and_package_info.cuda_version``).
"""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from twopass.config import REPO_ROOT
from twopass.local import template as tpl
from twopass.models.cuda import DRIVER_FLOOR

WORKER = REPO_ROOT / "infra" / "worker"

#: CUDA major of each onnxruntime-gpu release on PyPI (1.27: the first CUDA 13 build; 1.20-1.26: CUDA 12).
KNOWN_RELEASES = {
    **{f"1.{minor}.0": 12 for minor in range(20, 27)},
    "1.24.4": 12,
    "1.25.1": 12,
    **{f"1.{minor}.0": 13 for minor in range(27, 32)},
    "1.31.1": 13,
}


def _base_image_major() -> int:
    found = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.\d+\.\d+-", (WORKER / "Dockerfile").read_text(), re.M)
    assert found is not None
    return int(found.group(1))


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (WORKER / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            package, _, version = line.partition("==")
            pins[package] = version
    return pins


def _onnxruntime_gpu_requirements() -> dict[str, Requirement]:
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {
        extra: req
        for extra in ("worker-gpu", "worker-gpu-slim")
        for req in map(Requirement, extras[extra])
        if req.name == "onnxruntime-gpu"
    }


def test_the_base_image_is_cuda_13() -> None:
    assert _base_image_major() == 13


def test_pyproject_allows_only_releases_of_the_base_images_cuda_major() -> None:
    cuda = _base_image_major()
    for extra, req in _onnxruntime_gpu_requirements().items():
        allowed = {v for v in KNOWN_RELEASES if req.specifier.contains(v)}
        assert allowed, extra
        assert {KNOWN_RELEASES[v] for v in allowed} == {cuda}, (extra, sorted(allowed, key=Version))
        # Bounded above by what is known: the next minor release is not allowed until it is checked.
        newest = max(KNOWN_RELEASES, key=Version)
        following = Version(newest).release
        assert not req.specifier.contains(f"{following[0]}.{following[1] + 1}.0"), extra
        assert not req.specifier.contains("2.0.0"), extra
    assert set(_onnxruntime_gpu_requirements()["worker-gpu-slim"].extras) == {"cuda", "cudnn"}


def test_the_pinned_wheels_are_built_for_that_major() -> None:
    cuda = _base_image_major()
    gpu, slim = _pins("requirements-gpu.txt"), _pins("requirements-gpu-slim.txt")
    assert gpu["onnxruntime-gpu"] == slim["onnxruntime-gpu"]
    assert KNOWN_RELEASES[gpu["onnxruntime-gpu"]] == cuda
    # The gpu-slim image's CUDA and cuDNN libraries: the same major, from the wheels' own versions.
    for package in ("nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cuda-nvrtc", "nvidia-nvjitlink"):
        assert Version(slim[package]).major == cuda, package
    assert f"nvidia-cudnn-cu{cuda}" in slim
    assert not any(name.endswith("-cu12") or name.endswith("-cu11") for name in slim)


def test_the_image_and_the_ami_ask_for_a_driver_that_runs_it() -> None:
    cuda = _base_image_major()
    assert f'NVIDIA_REQUIRE_CUDA="cuda>={cuda}.0"' in (WORKER / "Dockerfile").read_text()
    description = " ".join(tpl.load()["Parameters"]["WorkerAmiId"]["Description"].split())
    stated = re.search(r"CUDA (\d+): it needs NVIDIA driver >= (\d+)", description)
    assert stated is not None, description
    assert int(stated.group(1)) == cuda
    assert int(stated.group(2)) >= DRIVER_FLOOR[cuda] == 580

"""The gpu-slim image's packages, without Docker and without a GPU: the CUDA provider links.

A clean environment holds exactly ``infra/worker/requirements-gpu-slim.txt`` (onnxruntime-gpu with
every CUDA 13 and cuDNN 9 library as ``nvidia-*`` wheels, ~2.6 GB installed). Once the wheels'
libraries are preloaded, as the worker does at start, everything the CUDA provider and those
libraries link must resolve but the NVIDIA driver's ``libcuda.so.1``, which the container toolkit
mounts from the host. On this GPU-less machine that is also exactly why a worker asked for CUDA
must refuse to start, and say so.

The first run downloads about 1.3 GB of wheels (about two minutes here); the environment is
cached under the env cache (tests/artefacts/envs.py) and rebuilt only when the file changes.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.artefacts.envs import LIBRARY, clean_env, isolated_env, library_env
from twopass.config import REPO_ROOT, Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REQUIREMENTS = REPO_ROOT / "infra" / "worker" / "requirements-gpu-slim.txt"
DOCKERFILE = REPO_ROOT / "infra" / "worker" / "Dockerfile"


@pytest.fixture(scope="module")
def gpu_python() -> Path:
    return clean_env(REQUIREMENTS) / "bin" / "python"


def _run(python: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], env=env or library_env(), capture_output=True, text=True, timeout=300, check=False
    )


def test_the_link_check_accepts_only_the_missing_driver(gpu_python: Path) -> None:
    proc = _run(gpu_python, "-m", "twopass.worker.linkcheck", "--from-wheels")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Each CUDA and cuDNN library linked came from the wheels (this machine has a CUDA runtime of its own).
    assert re.search(r"linked: \d+ from the nvidia-\* wheels, 0 from elsewhere$", proc.stdout, re.MULTILINE)
    missing = re.findall(r"^  (\S+): not found \((\w+);", proc.stdout, re.MULTILINE)
    assert missing == [("libcuda.so.1", "allowed")], proc.stdout
    checked = int(re.search(r"(\d+) libraries checked", proc.stdout).group(1))  # type: ignore[union-attr]
    assert checked > 10  # the provider and the wheels' libraries: cuDNN's engines, cuBLAS, cuFFT …


def test_the_link_check_fails_where_the_cuda_libraries_are_missing(gpu_python: Path, tmp_path: Path) -> None:
    # The same packages but the nvidia-* wheels (the gpu target's file on a base without CUDA): every
    # other entry of the environment's site-packages linked into a directory of its own, which the
    # interpreter gets instead of its site-packages (-S).
    site = next(gpu_python.parent.parent.glob("lib/python3.*/site-packages"))
    for entry in site.iterdir():
        if entry.name != "nvidia":
            (tmp_path / entry.name).symlink_to(entry)
    env = isolated_env({"PYTHONPATH": f"{tmp_path}:{LIBRARY}"})
    proc = _run(gpu_python, "-S", "-m", "twopass.worker.linkcheck", "--from-wheels", env=env)
    assert proc.returncode == 1
    # (libcudart.so.13 too, where the system has no CUDA runtime of its own.)
    for library in ("libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"):
        assert re.search(rf"^  {re.escape(library)}: not found \(MISSING", proc.stdout, re.MULTILINE), proc.stdout
    assert "libcuda.so.1: not found (allowed" in proc.stdout
    assert proc.stderr.startswith("link check failed: ")


def test_the_wheel_is_built_for_the_base_images_cuda_major(gpu_python: Path) -> None:
    code = "from onnxruntime.capi import build_and_package_info as i; print(i.package_name, i.cuda_version)"
    name, version = _run(gpu_python, "-c", code, env=isolated_env()).stdout.split()
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.", DOCKERFILE.read_text())
    assert base is not None
    assert (name, version.split(".")[0]) == ("onnxruntime-gpu", base.group(1))


def test_a_worker_asked_for_cuda_without_a_driver_exits_naming_it(gpu_python: Path) -> None:
    env = library_env({
        "TWOPASS_PROVIDERS": "cuda,cpu", "TWOPASS_SLOW_MODEL": Settings().slow_model,
        "TWOPASS_QUEUE_URL": "http://127.0.0.1:9/queue/jobs", "TWOPASS_TABLE_NAME": "jobs",
        "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    })  # fmt: skip
    proc = _run(gpu_python, "-m", "twopass.worker", env=env)
    assert proc.returncode == 3, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("twopass-worker cannot start:")]
    # onnxruntime itself would have served on the CPU: the provider loaded, the driver did not.
    assert "no NVIDIA driver (libcuda.so.1 not found" in line
    assert "onnxruntime-gpu 1.31.1 needs CUDA 13 (NVIDIA driver >= 580)" in line


def test_preflight_prints_what_it_found_and_serves_on_the_cpu_only_when_allowed(gpu_python: Path) -> None:
    model = Settings().slow_model
    asked = library_env({"TWOPASS_PROVIDERS": "cuda,cpu", "TWOPASS_MAX_BATCH_SIZE": "2", "TWOPASS_SLOW_MODEL": model})
    proc = _run(gpu_python, "-m", "twopass.worker", "--preflight", env=asked)
    assert proc.returncode == 1
    found = dict(line.split(":", 1) for line in proc.stdout.splitlines())
    assert found["built for CUDA"].strip() == "13.0"
    assert found["CUDA runtime"].strip().startswith("13.")  # loaded from the nvidia-* wheels
    assert found["cuDNN"].strip().startswith("9.")
    assert found["NVIDIA driver"].strip() == "not found"
    allowed = {**asked, "TWOPASS_ALLOW_CPU_FALLBACK": "1"}
    proc = _run(gpu_python, "-m", "twopass.worker", "--preflight", env=allowed)
    assert proc.returncode == 0, proc.stderr
    assert "CPUExecutionProvider (asked for CUDAExecutionProvider)" in proc.stdout

"""The worker image's build-time checks, run where the image's packages are and nothing else.

The Dockerfile runs ``python -m twopass.worker.selfcheck`` (every module the image carries imports)
and ``python -m twopass.worker --preflight`` in every stage; here they run in a clean environment
built from ``infra/worker/requirements-cpu.txt``, so ``make test`` fails first where an image build
would (a worker module importing fastapi, which only the API's layer has, once broke the build).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.artefacts.envs import LIBRARY, clean_env, isolated_env, library_env
from twopass.config import REPO_ROOT, Settings
from twopass.worker import selfcheck

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WORKER_REQUIREMENTS = REPO_ROOT / "infra" / "worker" / "requirements-cpu.txt"
DOCKERFILE = REPO_ROOT / "infra" / "worker" / "Dockerfile"


@pytest.fixture(scope="module")
def worker_python() -> Path:
    return clean_env(WORKER_REQUIREMENTS) / "bin" / "python"


def _run(python: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], env=env or library_env(), capture_output=True, text=True, timeout=120, check=False
    )


def test_the_dockerfile_runs_these_checks_in_every_stage() -> None:
    text = DOCKERFILE.read_text()
    stages = text.count("\nFROM ")
    assert text.count(" && python -m twopass.worker.selfcheck") == stages
    assert (
        text.count(" && TWOPASS_PROVIDERS=cpu TWOPASS_MAX_BATCH_SIZE=4 python -m twopass.worker --preflight\n")
        == stages
    )


def test_every_worker_module_imports_from_the_image_requirements(worker_python: Path) -> None:
    proc = _run(worker_python, "-m", "twopass.worker.selfcheck")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(selfcheck.worker_modules())} worker modules import" in proc.stdout
    # The walk leaves out what the image never loads: these need the API's packages.
    assert _run(worker_python, "-c", "import twopass.api.app").returncode != 0


def test_the_check_names_a_worker_module_that_needs_an_api_package(worker_python: Path, tmp_path: Path) -> None:
    copy = tmp_path / "twopass"
    shutil.copytree(LIBRARY / "twopass", copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    (copy / "data").symlink_to(LIBRARY / "twopass" / "data")
    (copy / "worker" / "uses_fastapi.py").write_text("from fastapi import HTTPException\n")
    proc = _run(worker_python, "-m", "twopass.worker.selfcheck", env=isolated_env({"PYTHONPATH": str(tmp_path)}))
    assert proc.returncode == 1
    assert "twopass.worker.uses_fastapi: ModuleNotFoundError: No module named 'fastapi'" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("1 of ")


def test_preflight_on_cpu_passes_in_the_image_environment(worker_python: Path) -> None:
    model = Settings().slow_model
    env = library_env({"TWOPASS_PROVIDERS": "cpu", "TWOPASS_MAX_BATCH_SIZE": "2", "TWOPASS_SLOW_MODEL": model})
    proc = _run(worker_python, "-m", "twopass.worker", "--preflight", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "CPUExecutionProvider" in proc.stdout and "2 images in" in proc.stdout


def test_a_worker_asked_for_cuda_without_it_exits_with_one_line(worker_python: Path) -> None:
    env = library_env({
        "TWOPASS_PROVIDERS": "cuda,cpu", "TWOPASS_SLOW_MODEL": Settings().slow_model,
        "TWOPASS_QUEUE_URL": "http://127.0.0.1:9/queue/jobs", "TWOPASS_TABLE_NAME": "jobs",
        "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    })  # fmt: skip
    proc = _run(worker_python, "-m", "twopass.worker", env=env)
    assert proc.returncode == 3, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("twopass-worker cannot start:")]
    assert "CUDAExecutionProvider was required but the session runs on CPUExecutionProvider" in line
    assert "is a CPU build" in line

"""The worker image's build-time checks, run where the image's packages and code are and nothing else.

The Dockerfile's closure stage copies the worker's share of the library (``infra/closure.py
worker``), and every image stage runs ``python -m twopass.worker.selfcheck`` (every module the image
carries imports) and ``python -m twopass.worker --preflight`` on that copy; here the same tool makes
the same copy, and the checks run on it in a clean environment built from
``infra/worker/requirements-cpu.txt``, so ``make test`` fails first where an image build would (a
worker module importing fastapi, which only the API's layer has, once broke the build; a module the
worker imports that the selection missed would break the image the same way).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.artefacts.envs import clean_env, isolated_env
from twopass.config import REPO_ROOT, Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WORKER_REQUIREMENTS = REPO_ROOT / "infra" / "worker" / "requirements-cpu.txt"
DOCKERFILE = REPO_ROOT / "infra" / "worker" / "Dockerfile"
CLOSURE = REPO_ROOT / "infra" / "closure.py"
#: The closure stage's command, as the Dockerfile writes it.
CLOSURE_STAGE_RUN = "RUN python /src/infra/closure.py worker --out /out"


@pytest.fixture(scope="module")
def worker_python() -> Path:
    return clean_env(WORKER_REQUIREMENTS) / "bin" / "python"


@pytest.fixture(scope="module")
def image_library(worker_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the image holds under /opt/twopass: the tool run as the closure stage runs it, by a bare
    interpreter (the image's; nothing of twopass or the development environment on its path)."""
    out = tmp_path_factory.mktemp("opt-twopass")
    proc = subprocess.run(
        [str(worker_python), str(CLOSURE), "worker", "--out", str(out)],
        env=isolated_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def _image_env(library: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The image's path: only its copy of the library, as ``PYTHONPATH=/opt/twopass`` there."""
    return isolated_env({"PYTHONPATH": str(library), **(extra or {})})


def _walked(library: Path) -> list[str]:
    """The modules the import walk finds in a copy of the library: those under ``twopass`` (not the
    package itself, nor ``__main__`` modules)."""
    names = {
        ".".join(p.relative_to(library).with_suffix("").parts).removesuffix(".__init__")
        for p in library.rglob("*.py")
        if p.name != "__main__.py"
    }
    return sorted(names - {"twopass"})


def _run(python: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_dockerfile_runs_these_checks_in_every_stage() -> None:
    text = DOCKERFILE.read_text()
    # Every image stage copies the closure stage's output, then checks it.
    stages = text.count("\nCOPY --from=closure /out/twopass /opt/twopass/twopass\n")
    assert stages == text.count("\nFROM ") - 1 and stages >= 3
    assert text.count(f"\n{CLOSURE_STAGE_RUN}\n") == 1
    assert text.count(" && python -m twopass.worker.selfcheck") == stages
    assert (
        text.count(" && TWOPASS_PROVIDERS=cpu TWOPASS_MAX_BATCH_SIZE=4 python -m twopass.worker --preflight\n")
        == stages
    )


def test_every_module_the_image_carries_imports_from_the_image_requirements(
    worker_python: Path, image_library: Path
) -> None:
    proc = _run(worker_python, "-m", "twopass.worker.selfcheck", env=_image_env(image_library))
    assert proc.returncode == 0, proc.stderr
    walked = _walked(image_library)
    assert f"{len(walked)} worker modules import" in proc.stdout
    # The copy is the worker's share: what only the API, the local stack or the front ends use is not there.
    for absent in ("twopass.api", "twopass.local", "twopass.cli", "twopass.client", "twopass.tools"):
        assert absent not in walked
        proc = _run(worker_python, "-c", f"import {absent}", env=_image_env(image_library))
        assert f"No module named '{absent}'" in proc.stderr


def test_the_check_names_a_worker_module_that_needs_an_api_package(
    worker_python: Path, image_library: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "twopass"
    shutil.copytree(image_library / "twopass", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "worker" / "uses_fastapi.py").write_text("from fastapi import HTTPException\n")
    proc = _run(worker_python, "-m", "twopass.worker.selfcheck", env=_image_env(tmp_path))
    assert proc.returncode == 1
    assert "twopass.worker.uses_fastapi: ModuleNotFoundError: No module named 'fastapi'" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("1 of ")


def test_preflight_on_cpu_passes_in_the_image_environment(worker_python: Path, image_library: Path) -> None:
    model = Settings().slow_model
    env = _image_env(
        image_library, {"TWOPASS_PROVIDERS": "cpu", "TWOPASS_MAX_BATCH_SIZE": "2", "TWOPASS_SLOW_MODEL": model}
    )
    proc = _run(worker_python, "-m", "twopass.worker", "--preflight", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "CPUExecutionProvider" in proc.stdout and "2 images in" in proc.stdout


def test_a_worker_asked_for_cuda_without_it_exits_with_one_line(worker_python: Path, image_library: Path) -> None:
    env = _image_env(image_library, {
        "TWOPASS_PROVIDERS": "cuda,cpu", "TWOPASS_SLOW_MODEL": Settings().slow_model,
        "TWOPASS_QUEUE_URL": "http://127.0.0.1:9/queue/jobs", "TWOPASS_TABLE_NAME": "jobs",
        "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    })  # fmt: skip
    proc = _run(worker_python, "-m", "twopass.worker", env=env)
    assert proc.returncode == 3, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("twopass-worker cannot start:")]
    assert "CUDAExecutionProvider was required but the session runs on CPUExecutionProvider" in line
    assert "is a CPU build" in line

"""The worker image, checked by construction (no Docker here): the Dockerfile, its pinned
requirements and the build context agree with the template and the Lambda deps layer."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

from twopass.config import REPO_ROOT
from twopass.local import template as tpl

WORKER = REPO_ROOT / "infra" / "worker"
DOCKERFILE = WORKER / "Dockerfile"


@cache
def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _all(instruction: str) -> list[str]:
    return [args for word, args in _instructions() if word == instruction]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_variants_and_bases() -> None:
    args = _all("ARG")
    assert "VARIANT=gpu" in args
    cuda = next(a for a in args if a.startswith("CUDA_IMAGE="))
    assert re.fullmatch(r"CUDA_IMAGE=nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", cuda)
    assert any(re.fullmatch(r"CPU_IMAGE=python:3\.12-slim\S*", a) for a in args)
    froms = _all("FROM")
    assert "${CUDA_IMAGE} AS base-gpu" in froms
    assert "${CPU_IMAGE} AS base-cpu" in froms
    assert froms[-1] == "base-${VARIANT}"


def test_runs_the_worker_as_non_root_and_stops_on_sigterm() -> None:
    assert _all("CMD")[-1] == '["python", "-m", "twopass.worker"]'
    assert _all("STOPSIGNAL") == ["SIGTERM"]
    user = _all("USER")[-1]
    assert not user.startswith(("root", "0"))
    assert "ENTRYPOINT" not in {w for w, _ in _instructions()}


def test_model_path_and_telemetry_match_the_task_definition() -> None:
    cfn = tpl.transform_file()
    env = tpl.resolve(
        tpl.container_environment(cfn, "WorkerTaskDefinition"), lambda *_: "x", tpl.parameter_defaults(cfn)
    )
    model = env["TWOPASS_SLOW_MODEL"]  # the default precision; the image's ENV matches it
    envs = " ".join(_all("ENV"))
    assert f"TWOPASS_SLOW_MODEL={model}" in envs
    assert "ORT_DISABLE_TELEMETRY=1" in envs
    # The image copies the slow model directory to /opt/models, so the task's path exists in it.
    assert "layers/models/slow/ /opt/models/" in _all("COPY")
    assert Path(model).parent == Path("/opt/models")
    assert (REPO_ROOT / "layers" / "models" / "slow" / Path(model).name).is_file()
    assert "layers/twopass/twopass /opt/twopass/twopass" in _all("COPY")


@pytest.mark.parametrize(("variant", "runtime"), [("gpu", "onnxruntime-gpu"), ("cpu", "onnxruntime")])
def test_requirements_are_pinned_and_match_the_lambda_layer(variant: str, runtime: str) -> None:
    pins = _pins(WORKER / f"requirements-{variant}.txt")
    layer = _pins(REPO_ROOT / "layers" / "deps" / "requirements.txt")
    assert pins[runtime] == layer["onnxruntime"]
    for shared in ("numpy", "pillow", "aws-lambda-powertools"):
        assert pins[shared] == layer[shared], shared
    assert {"boto3", "botocore"} <= set(pins)
    assert ("onnxruntime" in pins) != ("onnxruntime-gpu" in pins)  # exactly one runtime


def test_dockerignore_sends_only_what_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**"  # allow-list
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert {"infra/worker/requirements-gpu.txt", "infra/worker/requirements-cpu.txt"} <= allowed
    assert "layers/twopass/twopass/**" in allowed
    assert any(a.startswith("layers/models/slow/") for a in allowed)

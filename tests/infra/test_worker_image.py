"""The worker image, checked by construction (no Docker here): the Dockerfile's two targets, their
pinned requirements and the build context agree with each other, the template and the Lambda deps layer.
(tests/artefacts runs the worker from exactly the image's requirement file.)"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from twopass.config import REPO_ROOT
from twopass.local import template as tpl

WORKER = REPO_ROOT / "infra" / "worker"
DOCKERFILE = WORKER / "Dockerfile"
VARIANTS = ("cpu", "gpu")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]

    def all(self, instruction: str) -> list[str]:
        return [args for word, args in self.instructions if word == instruction]


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


@cache
def _stages() -> tuple[dict[str, str], list[Stage]]:
    """The global ARGs (name → default) and the stages in file order."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for word, rest in _instructions():
        if word == "FROM":
            base, _, name = rest.partition(" AS ")
            stages.append(Stage(name.strip(), base.strip(), []))
        elif not stages:
            assert word == "ARG", f"{word} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((word, rest))
    return args, stages


def _stage(variant: str) -> Stage:
    return next(s for s in _stages()[1] if s.name == variant)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_one_target_per_variant_and_cpu_never_touches_the_cuda_base() -> None:
    args, stages = _stages()
    assert [s.name for s in stages] == ["cpu", "gpu"]  # cpu first: the legacy builder builds up to the target
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", args["CUDA_IMAGE"])
    assert re.fullmatch(r"python:3\.12-slim\S*", args["CPU_IMAGE"])
    assert _stage("cpu").base == "${CPU_IMAGE}"
    assert _stage("gpu").base == "${CUDA_IMAGE}"
    for stage in stages:
        # Nothing is taken from another stage, so building one never builds (or pulls for) the other.
        assert not any(a.startswith("--from") for a in stage.all("COPY") + stage.all("RUN")), stage.name
    # No frontend to pull: an offline BuildKit builds with its own.
    assert not DOCKERFILE.read_text().lstrip().lower().startswith("# syntax")


def test_the_two_stages_differ_only_in_base_requirements_and_providers() -> None:
    def tail(variant: str) -> list[tuple[str, str]]:
        instructions = _stage(variant).instructions
        start = next(i for i, (w, a) in enumerate(instructions) if w == "COPY" and "requirements-" in a)
        out = []
        for word, rest in instructions[start:]:
            rest = rest.replace(f"requirements-{variant}.txt", "requirements-VARIANT.txt")
            rest = re.sub(r"TWOPASS_PROVIDERS=\S+", "TWOPASS_PROVIDERS=…", rest)
            out.append((word, rest.replace(f"worker ({variant})", "worker (VARIANT)")))
        return out

    assert tail("cpu") == tail("gpu")
    assert "TWOPASS_PROVIDERS=cpu" in " ".join(_stage("cpu").all("ENV"))
    assert "TWOPASS_PROVIDERS=cuda,cpu" in " ".join(_stage("gpu").all("ENV"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_installs_exactly_its_pinned_file(variant: str) -> None:
    stage = _stage(variant)
    assert f"infra/worker/requirements-{variant}.txt /tmp/requirements.txt" in stage.all("COPY")
    install = next(r for r in stage.all("RUN") if "pip install" in r)
    # --no-deps: the file pins the whole closure; pip check fails the build if it ever does not.
    assert "--no-deps" in install and "-r /tmp/requirements.txt" in install and "--only-binary=:all:" in install
    assert "pip check" in install


@pytest.mark.parametrize("variant", VARIANTS)
def test_runs_the_worker_as_non_root_and_stops_on_sigterm(variant: str) -> None:
    stage = _stage(variant)
    # Exec form, no ENTRYPOINT and no SHELL: SIGTERM reaches the worker, not a shell in front of it.
    assert stage.all("CMD") == ['["python", "-m", "twopass.worker"]']
    assert stage.all("STOPSIGNAL") == ["SIGTERM"]
    assert not stage.all("ENTRYPOINT") and not stage.all("SHELL")
    user = stage.all("USER")[-1]
    assert not user.startswith(("root", "0"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_path_and_telemetry_match_the_task_definition(variant: str) -> None:
    cfn = tpl.transform_file()
    env = tpl.resolve(
        tpl.container_environment(cfn, "WorkerTaskDefinition"), lambda *_: "x", tpl.parameter_defaults(cfn)
    )
    model = env["TWOPASS_SLOW_MODEL"]  # the default precision; the image's ENV matches it
    stage = _stage(variant)
    envs = " ".join(stage.all("ENV"))
    assert f"TWOPASS_SLOW_MODEL={model}" in envs
    assert "ORT_DISABLE_TELEMETRY=1" in envs
    assert "HOME=/tmp" in envs  # the root file system is read-only; /tmp is the task's tmpfs
    # The image copies the slow model directory to /opt/models, so the task's path exists in it.
    assert "layers/models/slow/ /opt/models/" in stage.all("COPY")
    assert Path(model).parent == Path("/opt/models")
    assert (REPO_ROOT / "layers" / "models" / "slow" / Path(model).name).is_file()
    assert "layers/twopass/twopass /opt/twopass/twopass" in stage.all("COPY")


@pytest.mark.parametrize(("variant", "runtime"), [("gpu", "onnxruntime-gpu"), ("cpu", "onnxruntime")])
def test_requirements_are_pinned_and_match_the_lambda_layer(variant: str, runtime: str) -> None:
    pins = _pins(WORKER / f"requirements-{variant}.txt")
    layer = _pins(REPO_ROOT / "layers" / "deps" / "requirements.txt")
    assert pins[runtime] == layer["onnxruntime"]
    for shared in ("numpy", "pillow", "aws-lambda-powertools"):
        assert pins[shared] == layer[shared], shared
    assert {"boto3", "botocore", "httpx"} <= set(pins)
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

"""The worker image, checked by construction (no Docker here): the Dockerfile's three targets, their
pinned requirements and the build context agree with each other, the template and the Lambda deps layer.
(tests/artefacts runs the worker, its build-time checks and the gpu-slim link check from exactly the
image's requirement files.)"""

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
VARIANTS = ("cpu", "gpu-slim", "gpu")
GPU_VARIANTS = ("gpu-slim", "gpu")
#: What the container toolkit reads on the gpu-slim image (the CUDA base image sets its own).
NVIDIA_ENV = {
    "NVIDIA_VISIBLE_DEVICES": "all",
    "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
    "NVIDIA_REQUIRE_CUDA": '"cuda>=13.0"',
}


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
    # The python-based stages first: the legacy builder builds every stage up to the target.
    assert [s.name for s in stages] == ["closure", "cpu", "gpu-slim", "gpu"]
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", args["CUDA_IMAGE"])
    assert re.fullmatch(r"python:3\.12-slim\S*", args["CPU_IMAGE"])
    assert _stage("closure").base == _stage("cpu").base == _stage("gpu-slim").base == "${CPU_IMAGE}"
    assert _stage("gpu").base == "${CUDA_IMAGE}"
    for stage in stages:
        # Only the library's worker share (the closure stage, on the python base) is taken from another
        # stage, so building one variant never builds (or pulls for) another.
        taken = [a for a in stage.all("COPY") + stage.all("RUN") if a.startswith(("--from", "--mount"))]
        assert taken == ([] if stage.name == "closure" else ["--from=closure /out/twopass /opt/twopass/twopass"])
    # No frontend to pull: an offline BuildKit builds with its own.
    assert not DOCKERFILE.read_text().lstrip().lower().startswith("# syntax")


def _tail(variant: str) -> list[tuple[str, str]]:
    """The stage from its requirement file on, with what may differ between stages made generic."""
    instructions = _stage(variant).instructions
    start = next(i for i, (w, a) in enumerate(instructions) if w == "COPY" and "requirements-" in a)
    out = []
    for word, rest in instructions[start:]:
        if word == "RUN" and "twopass.worker.linkcheck" in rest:
            continue  # the GPU stages' own check (test below)
        rest = rest.replace(f"requirements-{variant}.txt", "requirements-VARIANT.txt")
        rest = re.sub(r"TWOPASS_PROVIDERS=\S+", "TWOPASS_PROVIDERS=…", rest)
        rest = re.sub(r" NVIDIA_\w+=\S+", "", rest)
        out.append((word, rest.replace(f"worker ({variant})", "worker (VARIANT)")))
    return out


def test_the_stages_differ_only_in_base_requirements_providers_and_gpu_checks() -> None:
    assert _tail("cpu") == _tail("gpu-slim") == _tail("gpu")
    assert "TWOPASS_PROVIDERS=cpu" in " ".join(_stage("cpu").all("ENV"))
    for variant in GPU_VARIANTS:
        # Required, not preferred: a GPU task that cannot use its GPU exits instead of serving on the CPU.
        assert "TWOPASS_PROVIDERS=cuda,cpu" in " ".join(_stage(variant).all("ENV"))


def test_the_gpu_slim_stage_tells_the_container_toolkit_what_it_needs() -> None:
    env = " ".join(_stage("gpu-slim").all("ENV"))
    for name, value in NVIDIA_ENV.items():
        assert f"{name}={value}" in env, name
    for variant in ("cpu", "gpu"):  # the CUDA base sets its own; the cpu image wants no GPU
        assert "NVIDIA_" not in " ".join(_stage(variant).all("ENV")), variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_stage_checks_its_imports_and_model_at_build_time(variant: str) -> None:
    runs = _stage(variant).all("RUN")
    check = next(r for r in runs if "compileall" in r)
    # The one import walk make test also runs (tests/artefacts/test_worker_checks.py), then the model
    # loads and runs a batch on the CPU: there is no GPU at build time.
    assert "python -m twopass.worker.selfcheck" in check
    assert "TWOPASS_PROVIDERS=cpu" in check and "python -m twopass.worker --preflight" in check
    assert "python -c" not in check  # no inline copy of the walk to drift from the module
    links = [r for r in runs if "twopass.worker.linkcheck" in r]
    expected = {"cpu": [], "gpu": ["python -m twopass.worker.linkcheck"],
                "gpu-slim": ["python -m twopass.worker.linkcheck --from-wheels"]}[variant]  # fmt: skip
    assert links == expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_health_check_is_the_preflight(variant: str) -> None:
    (check,) = _stage(variant).all("HEALTHCHECK")
    assert check.endswith('CMD ["python", "-m", "twopass.worker", "--preflight"]')
    interval = re.search(r"--interval=(\d+)s", check)
    assert interval is not None and int(interval.group(1)) >= 60  # a model load each time: not often


def test_the_import_walk_leaves_out_what_the_requirement_check_leaves_out() -> None:
    from tests.artefacts.test_requirements import SHIPPED
    from twopass.worker.selfcheck import NOT_IN_THE_IMAGE

    for variant in VARIANTS:
        _, _, skipped = SHIPPED[f"worker image ({variant})"]
        assert tuple(f"twopass.{name}" for name in skipped) == NOT_IN_THE_IMAGE


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
        tpl.container_environment(cfn, "WorkerTaskDefinition"),
        lambda *_: "x",
        tpl.parameter_defaults(cfn),
        cfn.get("Conditions"),
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
    assert "--from=closure /out/twopass /opt/twopass/twopass" in stage.all("COPY")


@pytest.mark.parametrize(
    ("variant", "runtime"), [("gpu", "onnxruntime-gpu"), ("gpu-slim", "onnxruntime-gpu"), ("cpu", "onnxruntime")]
)
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
    assert {f"infra/worker/requirements-{variant}.txt" for variant in VARIANTS} <= allowed
    assert {"layers/twopass/twopass/**", "infra/closure.py"} <= allowed
    assert any(a.startswith("layers/models/slow/") for a in allowed)

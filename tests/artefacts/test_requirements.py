"""The artefacts' requirement files against pyproject.toml's extras and the code they ship (offline).

``infra/requirements.py --check`` must pass, and it must catch a file that drifted; separately, every
third-party module the shipped code imports (anywhere: lazy imports inside functions too) must come
from a distribution the artefact's file pins, so a new import cannot ship without its package.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import subprocess
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from twopass.config import REPO_ROOT


def _load_tool() -> Any:
    """infra/requirements.py is a script, not a package: loaded from its path."""
    spec = importlib.util.spec_from_file_location("twopass_requirements_tool", REPO_ROOT / "infra" / "requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script loads
    spec.loader.exec_module(module)
    return module


reqs = _load_tool()

LIBRARY = REPO_ROOT / "layers" / "twopass" / "twopass"

#: What each artefact carries: (requirement file, code it ships and runs, library subpackages it never loads).
SHIPPED: dict[str, tuple[Path, list[Path], tuple[str, ...]]] = {
    "worker image (cpu)": (
        REPO_ROOT / "infra" / "worker" / "requirements-cpu.txt",
        [LIBRARY],
        ("api", "local"),
    ),
    "worker image (gpu)": (
        REPO_ROOT / "infra" / "worker" / "requirements-gpu.txt",
        [LIBRARY],
        ("api", "local"),
    ),
    "worker image (gpu-slim)": (
        REPO_ROOT / "infra" / "worker" / "requirements-gpu-slim.txt",
        [LIBRARY],
        ("api", "local"),
    ),
    "API Lambda (deps layer + runtime)": (
        REPO_ROOT / "layers" / "deps" / "requirements.txt",
        [LIBRARY, REPO_ROOT / "functions" / "api" / "app.py"],
        ("worker", "local"),
    ),
}


def test_every_requirement_file_matches_its_extra() -> None:
    assert reqs.check() == []


def test_the_check_runs_as_a_command() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "infra" / "requirements.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def _copy(artefact: reqs.Artefact, tmp_path: Path, edit: Any = None) -> reqs.Artefact:
    text = artefact.path.read_text()
    path = tmp_path / artefact.path.name
    path.write_text(edit(text) if edit else text)
    return reqs.Artefact(path, artefact.extra, artefact.about)


def test_the_check_catches_a_missing_or_stale_pin(tmp_path: Path) -> None:
    cpu = next(a for a in reqs.ARTEFACTS if a.extra == "worker")

    def drop_httpx(text: str) -> str:
        return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("httpx=="))

    problems = reqs.check([_copy(cpu, tmp_path, drop_httpx)])
    assert any("httpx" in p and "not pinned" in p for p in problems), problems

    def old_numpy(text: str) -> str:
        return "".join(
            "numpy==1.26.4\n" if line.startswith("numpy==") else line for line in text.splitlines(keepends=True)
        )

    problems = reqs.check([_copy(cpu, tmp_path, old_numpy)])
    assert any("numpy==1.26.4 does not satisfy" in p for p in problems), problems


def test_the_check_catches_an_extra_changed_without_regenerating(tmp_path: Path) -> None:
    cpu = next(a for a in reqs.ARTEFACTS if a.extra == "worker")
    project = reqs._project()
    project["optional-dependencies"]["worker-base"] = [*project["optional-dependencies"]["worker-base"], "rich>=13"]
    problems = reqs.check([_copy(cpu, tmp_path)], project)
    assert any("rich" in p and "not pinned" in p for p in problems), problems
    assert any("other requirements" in p for p in problems), problems


def test_the_check_catches_artefacts_that_disagree(tmp_path: Path) -> None:
    cpu, gpu = (next(a for a in reqs.ARTEFACTS if a.extra == e) for e in ("worker", "worker-gpu"))
    version = reqs.read_lock(gpu.path).pins["onnxruntime-gpu"]

    def other_release(text: str) -> str:
        return text.replace(f"onnxruntime-gpu=={version}", "onnxruntime-gpu==999.0")

    problems = reqs.check([_copy(cpu, tmp_path), _copy(gpu, tmp_path, other_release)])
    assert any(p.startswith("onnxruntime is pinned differently") for p in problems), problems


def test_extras_expand_self_references_and_project_dependencies() -> None:
    names = {r.name for r in reqs.requirements("worker-gpu")}
    assert {"onnxruntime-gpu", "httpx", "boto3"} <= names
    assert "onnxruntime" not in names
    assert "twopass" not in names


# ---------------------------------------------------------------- imports of the shipped code


def _python_files(paths: Iterable[Path], skip: tuple[str, ...]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
            continue
        for file in sorted(path.rglob("*.py")):
            parts = file.relative_to(path).parts
            if parts[0] not in skip:
                yield file


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_modules(file: Path) -> set[str]:
    """Top-level names of absolute imports, wherever they are, except under ``if TYPE_CHECKING:``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(file.read_text(), str(file)))
    return found


@cache
def _distributions() -> dict[str, list[str]]:
    """Import name → distributions providing it, from this (development) environment."""
    return {k: [reqs.canonicalize_name(d) for d in v] for k, v in importlib.metadata.packages_distributions().items()}


@pytest.mark.parametrize("artefact", list(SHIPPED))
def test_every_third_party_import_is_pinned(artefact: str) -> None:
    requirement_file, code, skip = SHIPPED[artefact]
    pins = set(reqs.read_lock(requirement_file).pins)
    pins |= {reqs.SAME_RELEASE[p] for p in pins if p in reqs.SAME_RELEASE}
    missing = {}
    for file in _python_files(code, skip):
        for module in _imported_modules(file) - set(sys.stdlib_module_names) - {"twopass", "__future__"}:
            providers = _distributions().get(module, [])
            if not pins.intersection(providers):
                missing[module] = f"{file.relative_to(REPO_ROOT)} (from {providers or 'no installed package'})"
    assert missing == {}, f"{requirement_file.relative_to(REPO_ROOT)} lacks what the code imports: {missing}"


def test_artefacts_that_resolved_apart_are_brought_to_a_release_all_can_install() -> None:
    cpu = reqs.Resolved({"onnxruntime": "1.32.0", "numpy": "2.5.5"}, {})
    gpu = reqs.Resolved({"onnxruntime-gpu": "1.31.1", "numpy": "2.5.5"}, {})  # the GPU build lags a release
    pins = reqs._oldest_of_each([cpu, gpu])
    assert pins["onnxruntime"] == pins["onnxruntime-gpu"] == "1.31.1"
    assert pins["numpy"] == "2.5.5"

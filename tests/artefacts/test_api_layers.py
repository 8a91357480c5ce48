"""The API's three layers: its services know nothing of HTTP, and only the HTTP layer knows the use cases.

``api/services`` may import no web framework and none of the API's HTTP modules or use cases;
``api/usecases`` may import the services and the HTTP layer's models and errors, never the routes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[2] / "layers" / "twopass" / "twopass" / "api"


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules(folder: str) -> list[Path]:
    found = sorted((API / folder).glob("*.py"))
    assert found, folder
    return found


@pytest.mark.parametrize("path", modules("services"), ids=lambda p: p.stem)
def test_a_service_imports_no_http(path: Path) -> None:
    bad = {
        name
        for name in imported(path)
        if name.split(".")[0] in {"fastapi", "starlette", "mangum"}
        or (name.startswith("twopass.api.") and not name.startswith("twopass.api.services"))
    }
    assert not bad, f"{path.name} reaches above the services: {sorted(bad)}"


@pytest.mark.parametrize("path", modules("usecases"), ids=lambda p: p.stem)
def test_a_use_case_imports_no_route(path: Path) -> None:
    bad = {name for name in imported(path) if name.startswith(("twopass.api.routes", "twopass.api.oip.routes"))}
    assert not bad, f"{path.name} imports routes: {sorted(bad)}"

"""Each artefact carries only its own code, and the library's parts import only downwards.

``infra/closure.py`` selects what the API's Lambda layer and the worker image hold: the static import
closure of their entry points (lazy imports included) and the package data those modules name. Here
the selections are held to the rules: the layer holds no worker, local-stack, command-line, SDK or
tools code; the image no API code and none of those either. The same module's ``LAYERS`` table says
which part of the package may import which; every import of the real tree must follow it. Each rule
is shown to fail on a copy of the library with a bad import put in. Fast, no servers; the one slow
test builds the layer with its Makefile and runs the API handler from it alone.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.artefacts.envs import LIBRARY, clean_env, isolated_env
from twopass.config import REPO_ROOT
from twopass.local import template as tpl


def _load_tool() -> Any:
    """infra/closure.py is a script, not a package: loaded from its path."""
    spec = importlib.util.spec_from_file_location("twopass_closure_tool", REPO_ROOT / "infra" / "closure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script loads
    spec.loader.exec_module(module)
    return module


closure = _load_tool()

FRONT_ENDS = ("twopass.local", "twopass.cli", "twopass.client", "twopass.tools")
#: What each artefact must not carry.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "api": ("twopass.worker", *FRONT_ENDS),
    "worker": ("twopass.api", *FRONT_ENDS),
}
LAYER_MAKEFILE = REPO_ROOT / "layers" / "twopass" / "Makefile"
LAYER_REQUIREMENTS = REPO_ROOT / "layers" / "deps" / "requirements.txt"


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def artefact_problems(package: Any, repo_root: Path = REPO_ROOT) -> list[str]:
    """Every module an artefact carries that it must not."""
    problems = []
    for name, forbidden in FORBIDDEN.items():
        selection = closure.select(closure.ARTEFACTS[name], package, repo_root)
        problems += [f"{name} carries {m}" for m in sorted(selection.modules) if _under(m, forbidden)]
    return problems


@pytest.fixture(scope="module")
def package() -> Any:
    return closure.Package(LIBRARY)


def _selection(package: Any, artefact: str) -> Any:
    return closure.select(closure.ARTEFACTS[artefact], package)


# ---------------------------------------------------------------- the real tree


def test_each_artefact_carries_only_its_share(package: Any) -> None:
    assert artefact_problems(package) == []
    api, worker = _selection(package, "api"), _selection(package, "worker")
    # What the entry points name is there, with the packages above it.
    assert {"twopass", "twopass.api", "twopass.api.app"} <= api.modules
    assert {"twopass.worker", "twopass.worker.__main__", "twopass.worker.selfcheck", "twopass.worker.linkcheck"} <= (
        worker.modules
    )
    # Both need the domain code they share, and neither is the whole library.
    assert {"twopass.jobs.dynamodb", "twopass.queue.sqs", "twopass.models.runtime"} <= api.modules & worker.modules
    assert len(api.modules) < len(package.modules) and len(worker.modules) < len(package.modules)
    print(
        f"of {len(package.modules)} modules: API layer {len(api.modules)}, worker image {len(worker.modules)}, "
        f"shared {len(api.modules & worker.modules)}"
    )


def test_package_data_goes_only_where_it_is_read(package: Any) -> None:
    api = {str(p) for p in _selection(package, "api").data}
    worker = {str(p) for p in _selection(package, "worker").data}
    static = {str(p) for p in package.data_files() if p.parts[:2] == ("api", "static")}
    assert static  # the demo page's files, read by twopass.api.routes.demo
    # The labels name every prediction; the cat is the API's warm-up image; the tools' figures,
    # the card schema (for authors and tests) and py.typed (for type checkers) run nowhere.
    assert api == {"data/imagenet_labels.json", "data/cat.jpg", *static}
    assert worker == {"data/imagenet_labels.json"}


def test_the_package_data_patterns_are_pyprojects() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert list(closure.PACKAGE_DATA) == pyproject["tool"]["setuptools"]["package-data"]["twopass"]


def test_the_parts_import_only_what_the_layer_table_allows(package: Any) -> None:
    assert package.layer_violations() == []
    # Every part is in the table (a new one must be placed), and the known cycles are exactly those there.
    for part in {closure.part_of(m) for m in package.modules} - {""}:
        closure.layer_of(part)
    assert set(package.cycles()) == set(closure.KNOWN_CYCLES), "a cycle appeared, or a known one was removed"
    assert package.layer_problems() == []


def test_the_table_keeps_the_api_and_the_worker_apart_and_the_front_ends_on_top() -> None:
    assert not closure.allowed("api", "worker") and not closure.allowed("worker", "api")
    for part in ("config", "aws", "exceptions", "observability", "backoff", "jobs", "api", "worker"):
        assert not any(closure.allowed(part, front.removeprefix("twopass.")) for front in FRONT_ENDS), part
    assert closure.allowed("cli", "local") and not closure.allowed("local", "cli")
    assert not closure.allowed("config", "jobs") and closure.allowed("jobs", "config")


def test_the_template_builds_the_layer_with_the_tool() -> None:
    layer = tpl.load()["Resources"]["TwopassLayer"]
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert layer["Properties"]["ContentUri"] == "layers/twopass"
    text = LAYER_MAKEFILE.read_text()
    assert "\nbuild-TwopassLayer:\n" in text
    assert '/infra/closure.py" api ' in text and '--out "$(ARTIFACTS_DIR)/python"' in text


# ---------------------------------------------------------------- the tool on a package of its own


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_every_kind_of_import_is_followed(tmp_path: Path) -> None:
    library = tmp_path / "lib"
    _write(library / "twopass", {
        "__init__.py": "",
        "entry.py": (
            '"""in_a_docstring.json"""\n'
            "import importlib\nfrom typing import TYPE_CHECKING\n"
            "import twopass.eager\n"
            "from twopass import submodule\n"
            "from . import relative\n"
            "from twopass.pkg.deep import name\n"
            "if TYPE_CHECKING:\n    from twopass.typing_only import T\n"
            "def later():\n    from twopass.lazy import thing\n    return thing\n"
            "async def dynamic():\n    return importlib.import_module('twopass.by_name')\n"
        ),
        "eager.py": "", "submodule.py": "", "relative.py": "", "typing_only.py": "", "by_name.py": "",
        "lazy.py": "from twopass.config import DATA\nthing = (DATA / 'used.json', 'data/also_used.txt')\n",
        "config.py": "from pathlib import Path\nDATA = Path(__file__).parent / 'data'\n",
        "pkg/__init__.py": "", "pkg/deep.py": "name = 1\n", "pkg/unused.py": "",
        "never.py": "import twopass.also_never\n", "also_never.py": "",
        "data/used.json": "{}", "data/also_used.txt": "", "data/unused.json": "{}", "data/in_a_docstring.json": "{}",
        "notapackage/orphan.py": "",
    })  # fmt: skip
    package = closure.Package(library)
    artefact = closure.Artefact("test", ("twopass.entry",))
    selection = closure.select(artefact, package, tmp_path)
    assert selection.modules == {
        "twopass", "twopass.entry", "twopass.eager", "twopass.submodule", "twopass.relative",
        "twopass.pkg", "twopass.pkg.deep", "twopass.typing_only", "twopass.lazy", "twopass.by_name",
        "twopass.config",
    }  # fmt: skip
    assert [str(p) for p in selection.data] == ["data/also_used.txt", "data/used.json"]

    # A script outside the package: its imports are the roots.
    (tmp_path / "handler.py").write_text("from twopass.pkg import deep\n")
    script = closure.select(closure.Artefact("script", (), ("handler.py",)), package, tmp_path)
    assert script.modules == {"twopass", "twopass.pkg", "twopass.pkg.deep"}

    # The copy holds exactly the selection, and a stale module from an earlier copy goes.
    out = tmp_path / "out"
    _write(out / "twopass", {"stale.py": ""})
    closure.copy(selection, package, out)
    copied = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert copied == [str(p) for p in selection.files(package)]
    assert "twopass/stale.py" not in copied and "twopass/data/used.json" in copied


def test_the_tool_runs_as_a_command_and_says_what_it_copied(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "infra" / "closure.py"), "worker", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith("twopass for the worker image: ") and " modules, " in line and " KB -> " in line
    assert (tmp_path / "twopass" / "worker" / "__main__.py").is_file()
    assert not (tmp_path / "twopass" / "api").exists()


# ---------------------------------------------------------------- the guard fails where it should

#: (file of the library, code appended to it, what the checks must then report).
BAD_IMPORTS = {
    "worker reaches the local stack lazily": (
        "worker/runner.py",
        "\n\ndef _debug() -> None:\n    from twopass.local import stack  # noqa\n",
        ["worker carries twopass.local", "worker may not import local"],
    ),
    "domain code imports the API": (
        "jobs/base.py",
        "\nfrom twopass.api import errors  # noqa\n",
        ["worker carries twopass.api", "jobs may not import api"],
    ),
    "the API imports the worker": (
        "api/context.py",
        "\nfrom twopass.worker import stats  # noqa\n",
        ["api carries twopass.worker", "api may not import worker"],
    ),
    "the API ships a tool": (
        "api/app.py",
        "\n\ndef _plan() -> None:\n    import importlib\n    importlib.import_module('twopass.tools.plan')\n",
        ["api carries twopass.tools.plan", "api may not import tools"],
    ),
    "foundation imports the domain (a cycle)": (
        "config.py",
        "\nimport twopass.models.labels  # noqa\n",
        ["config may not import models", "parts that import each other: config, models"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_IMPORTS))
def test_the_guard_fails_on_a_bad_import(case: str, tmp_path: Path) -> None:
    relative, code, expected = BAD_IMPORTS[case]
    library = tmp_path / "lib"
    shutil.copytree(LIBRARY / "twopass", library / "twopass", ignore=shutil.ignore_patterns("__pycache__"))
    target = library / "twopass" / relative
    target.write_text(target.read_text() + code)
    package = closure.Package(library)
    reported = "\n".join(artefact_problems(package) + package.layer_problems())
    # The untouched tree reports nothing (the tests above): these lines are the injection's.
    for line in expected:
        assert line in reported, reported


# ---------------------------------------------------------------- the layer, built and run alone

HANDLER_FROM_THE_LAYER = """
import importlib, json, pkgutil, sys
layer, code_dir, event_path, context_dir = sys.argv[1:5]
sys.path.insert(0, code_dir)  # LAMBDA_TASK_ROOT first, as the runtime does
sys.path.insert(0, context_dir)
import app
from lambda_context import LambdaContext
response = app.handler(json.loads(open(event_path).read()), LambdaContext())
loaded = sorted(m for m in sys.modules if m == "twopass" or m.startswith("twopass."))
outside = [m for m in loaded if not (sys.modules[m].__file__ or "").startswith(layer)]
import twopass
failed = {}
for info in pkgutil.walk_packages(twopass.__path__, "twopass."):
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = repr(exc)
print(json.dumps({"status": response["statusCode"], "body": response["body"], "loaded": len(loaded),
                  "outside": outside, "failed": failed}))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_layer_makefile_builds_a_layer_the_handler_runs_from_alone(tmp_path: Path) -> None:
    # The deps layer's clean environment: its interpreter is bare Python 3.12 plus the API's packages,
    # so this also shows the tool needs nothing but the standard library.
    python = clean_env(LAYER_REQUIREMENTS) / "bin" / "python"
    artifacts, scratch = tmp_path / "artifacts", tmp_path / "scratch"
    artifacts.mkdir()
    scratch.mkdir()
    # sam build runs make in a scratch copy of the folder with -f naming the Makefile where it is.
    build = subprocess.run(
        ["make", "-s", "-f", str(LAYER_MAKEFILE), "build-TwopassLayer", f"ARTIFACTS_DIR={artifacts}", f"PYTHON={python}"],
        cwd=scratch, env=isolated_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    print(build.stdout.strip())
    layer = artifacts / "python"
    package = closure.Package(LIBRARY)
    expected = [str(p) for p in closure.select(closure.ARTEFACTS["api"], package).files(package)]
    files = [p for p in layer.rglob("*") if p.is_file()]
    assert sorted(str(p.relative_to(layer)) for p in files if p.suffix != ".pyc") == expected
    # Compiled at build time (/opt is read-only on Lambda: no cold start compiles the layer), one each.
    sources = {p.relative_to(layer).with_suffix("") for p in files if p.suffix == ".py"}
    compiled = {p.parent.parent.relative_to(layer) / p.name.split(".")[0] for p in files if p.suffix == ".pyc"}
    assert compiled == sources

    proc = subprocess.run(
        [str(python), "-c", HANDLER_FROM_THE_LAYER, str(layer), str(REPO_ROOT / "functions" / "api"),
         str(REPO_ROOT / "tests" / "events" / "rest_health.json"), str(REPO_ROOT / "tests")],
        env=isolated_env({"PYTHONPATH": str(layer), "AWS_REGION": "us-east-1"}),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and json.loads(result["body"]) == {"health": "ok"}, result
    assert result["outside"] == [] and result["loaded"] > 1
    # Every module the layer holds imports there, the lazily imported ones too.
    assert result["failed"] == {}

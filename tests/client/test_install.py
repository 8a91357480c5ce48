"""The ways the README gives to get the ``twopass`` command work: ``.venv/bin/twopass`` after ``make run``,
and a client-only install (``pip install <clone>``) that brings httpx alone; ``make run`` installs what
``twopass local`` needs and no more.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from twopass import __version__
from twopass.cli.local import LOCAL_NEEDS
from twopass.local.stack import free_port

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """The distribution a requirement names, normalised (``moto[server]>=5.0`` -> ``moto``)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _extra(name: str) -> set[str]:
    """Every distribution an extra asks for, its references to the project's other extras followed."""
    names: set[str] = set()
    for requirement in PYPROJECT["optional-dependencies"][name]:
        nested = re.fullmatch(r"twopass\[([a-z0-9,-]+)\]", requirement)
        if nested:
            for other in nested.group(1).split(","):
                names |= _extra(other)
        else:
            names.add(_name(requirement))
    return names


def test_the_virtualenvs_twopass_command_runs() -> None:
    # What `make run` leaves in .venv/bin and the README tells a fresh clone to run.
    script = Path(sys.executable).parent / "twopass"
    assert script.is_file(), f"{script} is missing: the project is not installed in this environment"
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert (version.returncode, version.stdout.strip()) == (0, f"twopass {__version__}")
    url = f"http://127.0.0.1:{free_port()}"
    down = subprocess.run(
        [script, "--url", url, "--retries", "0", "health"], capture_output=True, text=True, timeout=60
    )
    assert down.returncode == 3
    assert "`make run` starts it" in down.stderr


def test_the_client_install_brings_httpx_alone() -> None:
    assert [_name(r) for r in PYPROJECT["dependencies"]] == ["httpx"]
    assert PYPROJECT["scripts"] == {"twopass": "twopass.cli:main"}
    # The installed metadata agrees: the command is this project's, and only the extras pull in more.
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="twopass")
    assert script.value == "twopass.cli:main"
    requires = importlib.metadata.requires("twopass") or []
    assert [_name(r) for r in requires if "extra ==" not in r] == ["httpx"]


def _closure(requirement: Requirement, found: set[str], visited: set[tuple[str, frozenset[str]]]) -> None:
    """Every installed distribution ``requirement`` pulls in, as pip would resolve it (markers evaluated)."""
    name = _name(requirement.name)
    key = (name, frozenset(requirement.extras))
    if key in visited:
        return
    visited.add(key)
    found.add(name)
    if name == "twopass":
        # This project's own extras from pyproject.toml: the environment may predate the latest edit.
        lines = PYPROJECT["dependencies"] + [
            r for e in requirement.extras for r in PYPROJECT["optional-dependencies"][e]
        ]
        for line in lines:
            _closure(Requirement(line), found, visited)
        return
    try:
        lines = importlib.metadata.requires(requirement.name) or []
    except importlib.metadata.PackageNotFoundError:
        return  # not for this platform or Python, so not installed here either
    for line in lines:
        dependency = Requirement(line)
        wanted = requirement.extras or {""}
        if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in wanted):
            _closure(dependency, found, visited)


def test_the_local_extra_has_what_twopass_local_needs_and_no_tools() -> None:
    local = _extra("local")
    distributions = importlib.metadata.packages_distributions()
    for module in LOCAL_NEEDS:
        assert {_name(d) for d in distributions[module]} & local, f"{module} is not in the local extra"
    # The tools `make test` adds stay out of `make run`'s install.
    closure: set[str] = set()
    _closure(Requirement("twopass[local]"), closure, set())
    assert not closure & {"pytest", "mypy", "ruff", "cfn-lint", "schemathesis", "hypothesis", "docker"}


def test_the_local_stack_imports_and_provisions_with_the_local_extra_alone() -> None:
    # `make run` installs twopass[local] only: run what the local stack imports and its provisioning of
    # template.yaml in moto with every module outside that install refused, as a fresh clone has them.
    closure: set[str] = set()
    _closure(Requirement("twopass[local]"), closure, set())
    modules = sorted(
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if any(_name(owner) in closure for owner in owners)
    )
    code = textwrap.dedent(
        """
        import importlib, importlib.abc, importlib.machinery, json, pkgutil, sys, sysconfig

        allowed = set(json.loads(sys.argv[1]))
        site = tuple({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})

        class Refuse(importlib.abc.MetaPathFinder):
            # Top-level modules installed in site-packages by a distribution outside twopass[local] are
            # refused; the standard library and this project (editable, from layers/) are not there.
            def find_spec(self, name, path, target=None):
                if "." in name or name in allowed:
                    return None
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                places = [spec.origin or ""] + list(spec.submodule_search_locations or []) if spec else []
                if any(place.startswith(site) for place in places):
                    raise ModuleNotFoundError(f"{name} is not installed by twopass[local]", name=name)
                return None

        sys.meta_path.insert(0, Refuse())
        import twopass.api, twopass.local, twopass.worker

        for package in (twopass.api, twopass.local, twopass.worker):
            for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                # `make sam-local` installs the dev extra; __main__ modules run when imported.
                if not module.name.endswith(("__main__", ".samlocal")):
                    importlib.import_module(module.name)
        # What the local stack imports only once running: the emulator, the template transform, /docs.
        for name in (
            "moto.moto_server.werkzeug_app", "werkzeug.serving", "samtranslator.translator.transform",
            "samtranslator.yaml_helper", "fastapi_offline", "jwt", "aws_lambda_powertools.metrics",
            "aws_lambda_powertools.logging.formatter", "uvicorn.main", "botocore.config",
        ):
            importlib.import_module(name)

        import boto3
        from moto import mock_aws
        from twopass.local.provision import provision

        with mock_aws():
            provisioned = provision(lambda service: boto3.client(service, region_name="us-east-1"))
        print(json.dumps(sorted(provisioned.api_env)))
        """
    )
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    run = subprocess.run(
        [sys.executable, "-c", code, json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "ORT_DISABLE_TELEMETRY": "1", **env},
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "TWOPASS_QUEUE_URL" in json.loads(run.stdout.splitlines()[-1])

"""Clean virtual environments holding exactly one artefact's requirement file, cached on disk.

Each environment is what the artefact installs and nothing else: a fresh ``python -m venv`` (no
system or development packages), then ``pip install --no-deps`` of the file, as the worker image and
the deps layer do, then ``pip check``. The library is not installed: the image and the Lambda layers
put it on the path, and so do the tests (``PYTHONPATH``). Environments are keyed by the file's
content and the interpreter, kept under ``$TWOPASS_ENV_CACHE`` (the Makefile's ``ENV_CACHE``,
default ``.cache/envs``) and rebuilt only when the file changes; a lock lets parallel runs share them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from twopass.config import REPO_ROOT

#: Bumped when the recipe below changes, so cached environments built the old way are not reused.
RECIPE = "1"
LIBRARY = REPO_ROOT / "layers" / "twopass"


def cache_dir() -> Path:
    return Path(os.environ.get("TWOPASS_ENV_CACHE") or REPO_ROOT / ".cache" / "envs")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def clean_env(requirements: Path) -> Path:
    """A virtual environment with exactly the packages ``requirements`` pins; its interpreter is ``bin/python``."""
    stem = f"{requirements.parent.name}-{requirements.stem}"
    key = hashlib.sha256(b"\0".join([RECIPE.encode(), sys.version.encode(), requirements.read_bytes()])).hexdigest()[
        :16
    ]
    root = cache_dir()
    target = root / f"{stem}-{key}"
    with _locked(root / f"{stem}.lock"):
        if (target / ".complete").is_file():
            return target
        for old in root.glob(f"{stem}-*"):  # earlier versions of this file: not needed again
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        python = str(target / "bin" / "python")
        pip = [python, "-m", "pip", "--disable-pip-version-check"]
        subprocess.run(
            [*pip, "install", "--quiet", "--no-deps", "--only-binary=:all:", "-r", str(requirements)],
            check=True,
            env=isolated_env(),
        )
        subprocess.run([*pip, "check"], check=True, env=isolated_env())
        (target / ".complete").write_text(f"{requirements.relative_to(REPO_ROOT)}\n")
    return target


def isolated_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus everything that would let a child see other packages."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH"}
    }
    env["PYTHONNOUSERSITE"] = "1"
    env.update(extra or {})
    return env


def library_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`isolated_env` with only the library on the path, as the image and the layer have it."""
    return isolated_env({"PYTHONPATH": str(LIBRARY), **(extra or {})})

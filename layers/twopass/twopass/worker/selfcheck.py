"""``python -m twopass.worker.selfcheck``: every module the worker image carries imports there.

The image copies the worker's share of the library (what ``infra/closure.py`` finds it can import)
and installs only the worker's packages, so a module the worker can load that imports an API-only
package (fastapi, mangum) would fail at run time, on the first job that reaches it. This walk
imports each one once: the Dockerfile runs it in every image stage, and ``tests/artefacts`` runs it
on the same share in a clean environment built from the image's requirement file, so ``make test``
fails before an image build would. The API and the local stack are not for the worker (and
``__main__`` modules would run), so they are left out where the whole library is on the path.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from collections.abc import Sequence

import twopass

#: Subpackages the worker image never loads: they need the API's or the local stack's packages.
NOT_IN_THE_IMAGE = ("twopass.api", "twopass.local")


def worker_modules() -> list[str]:
    """Every module under :mod:`twopass` the worker may import, sorted."""
    found: list[str] = []
    # walk_packages imports packages to find their children: a package that fails to import is
    # reported by import_all below, not here.
    for info in pkgutil.walk_packages(twopass.__path__, "twopass.", onerror=lambda _name: None):
        name = info.name
        if name.startswith(NOT_IN_THE_IMAGE) or name.rsplit(".", 1)[-1] == "__main__":
            continue
        found.append(name)
    return sorted(found)


def import_all(names: Sequence[str]) -> dict[str, str]:
    """Import each module; what failed, module name → the error's last line."""
    failed: dict[str, str] = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, whatever its type
            failed[name] = traceback.format_exception_only(exc)[-1].strip()
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m twopass.worker.selfcheck",
        description="Import every twopass module the worker image carries (all but twopass.api and "
        "twopass.local); exit 1 naming each one that fails.",
    ).parse_args(argv)
    names = worker_modules()
    failed = import_all(names)
    for name, error in failed.items():
        print(f"{name}: {error}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(names)} worker modules do not import here", file=sys.stderr)
        return 1
    print(f"{len(names)} worker modules import")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Copy only the part of the twopass library an artefact runs: the static import closure of its entry points.

The library (``layers/twopass/twopass``) holds the API, the worker, the local stack, the command
line, the client SDK and the operator tools. Each shipped artefact carries just what its entry
points can import, found by reading the code, not by running it:

    python infra/closure.py api --out DIR       # the API Lambda's layer (layers/twopass/Makefile)
    python infra/closure.py worker --out DIR    # the worker image (infra/worker/Dockerfile's closure stage)
    python infra/closure.py worker --list       # the modules and data files, one a line, nothing copied

A module's imports are every ``import`` and ``from … import`` in it, inside functions too (a lazy
import runs sooner or later, so it ships), ``from package import name`` where ``name`` is a
submodule, parent packages (importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py``) and
``importlib.import_module("twopass.…")`` / ``importlib.resources.files("twopass.…")`` with a literal
name. Imports under ``if TYPE_CHECKING:`` count as well: they cost little and a runtime reader of
annotations (FastAPI, ``typing.get_type_hints``) may resolve them.

Package data (pyproject.toml's ``package-data``) ships with an artefact when one of its modules names
the file in a string literal other than a docstring, by its name or a path ending in it, e.g.
``DATA_DIR / "imagenet_labels.json"``; a file nobody names is read by no artefact (``py.typed`` is
for type checkers of installed wheels). Names are matched, not paths: two data files of one name
would both ship where either is read.

The same module holds :data:`LAYERS`, the one table of which part of the package may import which:
``--check-layers`` (and tests/artefacts/test_closures.py) report every import that breaks it.

Standard library only, and no import of twopass itself: it runs in ``sam build``'s makefile builder
and in a bare Python build stage, where only the interpreter is installed.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "twopass"
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The folder that holds the package (``<LIBRARY>/twopass``): what goes on ``sys.path``.
LIBRARY = REPO_ROOT / "layers" / "twopass"
#: pyproject.toml's ``[tool.setuptools.package-data]`` for the package (tests/artefacts keeps them equal;
#: pyproject.toml is not in the worker image's build context, so it is not read from there).
PACKAGE_DATA = ("data/*", "py.typed", "api/static/*")


@dataclass(frozen=True)
class Artefact:
    """What one shipped artefact runs: its entry modules, and scripts outside the package whose
    imports are entry points too (paths relative to the repository root)."""

    about: str
    entries: tuple[str, ...]
    scripts: tuple[str, ...] = ()


ARTEFACTS: dict[str, Artefact] = {
    # The Lambda handler imports what it serves: its own imports are the roots, so a route added
    # to the handler is shipped without a change here.
    "api": Artefact("the API Lambda's TwopassLayer", (), ("functions/api/app.py",)),
    # `python -m twopass.worker` (CMD), and what the Dockerfile's RUN steps and HEALTHCHECK run.
    "worker": Artefact(
        "the worker image",
        ("twopass.worker", "twopass.worker.__main__", "twopass.worker.selfcheck", "twopass.worker.linkcheck"),
    ),
}

# ---------------------------------------------------------------- the layering table
#: The package's top-level parts, lowest layer first. A part may import its own modules, any part of
#: a lower layer and the parts of its own layer that :data:`SAME_LAYER` allows; nothing imports a
#: higher layer. ``twopass`` itself (``__init__``) is below everything: every import runs it.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundation", frozenset({"config", "aws", "exceptions", "observability", "backoff"})),
    ("domain", frozenset({"imaging", "models", "jobs", "queue", "payloads", "uploads", "notify", "cascade"})),
    ("services", frozenset({"api", "worker"})),
    ("front ends", frozenset({"tools", "client", "cli", "local"})),
)
#: Imports allowed inside a layer, part → parts of its own layer it may import. Foundation and domain
#: parts build on each other freely (still without cycles); the API and the worker never import each
#: other (each ships without the other); among the front ends only the command line reaches the
#: others: ``twopass local``, ``twopass calibrate`` and the SDK-backed commands are its subcommands.
SAME_LAYER: dict[str, frozenset[str]] = {
    **{part: parts - {part} for name, parts in LAYERS[:2] for part in parts},
    "api": frozenset(),
    "worker": frozenset(),
    "tools": frozenset(),
    "client": frozenset(),
    "cli": frozenset({"tools", "client", "local"}),
    "local": frozenset(),
}
#: Parts that import each other today although no part should (a cycle makes neither the lower one),
#: with what closes the loop. Each is reported by ``--check-layers``; the guard test fails on any
#: cycle not listed here and on any entry here that no longer is one (remove it when it is fixed).
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def part_of(module: str) -> str:
    """The top-level part a module belongs to: ``twopass.jobs.dynamo.table`` → ``jobs``; ``""`` for the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(part: str) -> int:
    """The index in :data:`LAYERS` of a part's layer; KeyError for a part the table does not place."""
    for index, (_, parts) in enumerate(LAYERS):
        if part in parts:
            return index
    raise KeyError(f"{PACKAGE}.{part} is in no layer of infra/closure.py's LAYERS: add it there")


def allowed(importer: str, imported: str) -> bool:
    """May a module of part ``importer`` import one of part ``imported``?"""
    if imported in ("", importer):
        return True
    if layer_of(imported) < layer_of(importer):
        return True
    return imported in SAME_LAYER.get(importer, frozenset())


# ---------------------------------------------------------------- reading the package


def index(library: Path = LIBRARY) -> dict[str, Path]:
    """Every module of the package under ``library``: dotted name → file."""
    root = library / PACKAGE
    if not (root / "__init__.py").is_file():
        raise FileNotFoundError(f"{root} is not the {PACKAGE} package")
    found: dict[str, Path] = {}
    for file in sorted(root.rglob("*.py")):
        relative = file.relative_to(library).with_suffix("")
        if "__pycache__" in relative.parts or not all(p.isidentifier() for p in relative.parts):
            continue
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        # A module inside a folder that is not a package (no __init__.py) cannot be imported as one.
        if all((library.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            found[".".join(parts)] = file
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module and its classes and functions."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of a relative import's base (``from ..x import y`` in ``module``)."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


#: Calls whose literal first argument names a module that must be there: they import it or read from it.
_LOADERS = {"import_module", "__import__", "files"}


@dataclass(frozen=True)
class Source:
    """What one file says: the package modules it imports and its non-docstring string literals."""

    imports: frozenset[str]
    strings: frozenset[str]


def read(file: Path, module: str | None, modules: Mapping[str, Path]) -> Source:
    """The package modules ``file`` imports (resolved against ``modules``) and its string literals.

    ``module`` is the file's own dotted name (for relative imports); None for a script outside the package.
    """
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    except SyntaxError as exc:
        # The package is Python 3.12 code: an older interpreter cannot read it (make's python3 may be one).
        raise SystemExit(
            f"{file}:{exc.lineno}: {exc.msg} (read with Python {sys.version.split()[0]}; run this with python3.12)"
        ) from exc
    is_package = file.name == "__init__.py"
    wanted: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            wanted.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and module is None:
                continue  # a script's relative import names nothing of the package
            base = _resolve(module or "", is_package, node.level, node.module)
            wanted.add(base)
            # `from twopass.api import app`: app is a submodule when one by that name exists.
            wanted.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            first = node.args[0]
            if called in _LOADERS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                wanted.add(first.value)
    imports: set[str] = set()
    for name in wanted:
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            continue
        # `import a.b.c` runs every package above c: the deepest existing module and its parents.
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                imports.add(candidate)
    docstrings = _docstrings(tree)
    strings = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }
    imports.discard(module or "")
    return Source(frozenset(imports), frozenset(strings))


class Package:
    """The package under ``library``, read once: modules, their imports, their string literals."""

    def __init__(self, library: Path = LIBRARY) -> None:
        self.library = library
        self.modules = index(library)
        self.sources = {name: read(path, name, self.modules) for name, path in self.modules.items()}

    def imports(self, module: str) -> frozenset[str]:
        return self.sources[module].imports

    def closure(self, entries: Iterable[str], scripts: Iterable[Path] = ()) -> set[str]:
        """Every module the entries (and the scripts' imports) can import, the entries included."""
        todo = []
        for entry in entries:
            if entry not in self.modules:
                raise KeyError(f"entry {entry} is not a module of {self.library / PACKAGE}")
            todo.append(entry)
        for script in scripts:
            todo.extend(read(script, None, self.modules).imports)
        seen: set[str] = set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            parts = name.split(".")
            todo.extend(".".join(parts[:end]) for end in range(1, len(parts)))  # parent packages run first
            todo.extend(self.imports(name))
        return seen

    def data_files(self) -> list[Path]:
        """The package data pyproject.toml ships (PACKAGE_DATA), relative to the package folder."""
        root = self.library / PACKAGE
        found = {
            path.relative_to(root)
            for pattern in PACKAGE_DATA
            for path in root.glob(pattern)
            if path.is_file() and "__pycache__" not in path.parts
        }
        return sorted(found)

    def data_for(self, modules: Iterable[str]) -> list[Path]:
        """The data files some module of ``modules`` names in a string literal (see the module docstring)."""
        named: set[str] = set()
        for name in modules:
            named |= _file_names(self.sources[name].strings)
        return [path for path in self.data_files() if path.name in named]

    def readers(self, data: Path) -> list[str]:
        """The modules that name a data file (relative to the package folder)."""
        return sorted(name for name, source in self.sources.items() if data.name in _file_names(source.strings))

    def part_imports(self) -> dict[str, set[str]]:
        """Top-level part → the other parts its modules import."""
        edges: dict[str, set[str]] = {}
        for name in self.modules:
            importer = part_of(name)
            for imported in map(part_of, self.imports(name)):
                if imported not in ("", importer):
                    edges.setdefault(importer, set()).add(imported)
        return edges

    def layer_violations(self) -> list[str]:
        """Every import across parts that :data:`LAYERS` does not allow, one line each."""
        problems: list[str] = []
        for name in sorted(self.modules):
            importer = part_of(name)
            for imported_module in sorted(self.imports(name)):
                imported = part_of(imported_module)
                try:
                    ok = allowed(importer, imported)
                except KeyError as exc:
                    problems.append(f"{name} imports {imported_module}: {exc.args[0]}")
                    continue
                if not ok:
                    problems.append(f"{name} imports {imported_module}: {importer} may not import {imported}")
        return problems

    def cycles(self) -> list[frozenset[str]]:
        """Groups of parts that import each other, directly or through others."""
        return strongly_connected(self.part_imports())

    def layer_problems(self) -> list[str]:
        """What ``--check-layers`` reports: disallowed imports, and cycles :data:`KNOWN_CYCLES` does not list."""
        problems = self.layer_violations()
        problems.extend(
            f"parts that import each other: {', '.join(sorted(group))}"
            for group in self.cycles()
            if group not in KNOWN_CYCLES
        )
        return problems


def _file_names(strings: Iterable[str]) -> set[str]:
    """The file names string literals may name: each literal, and its last path segment ("data/x.json")."""
    return {name for s in strings for name in (s, s.rsplit("/", 1)[-1])}


def strongly_connected(edges: Mapping[str, Iterable[str]]) -> list[frozenset[str]]:
    """The groups of more than one node that reach each other (Tarjan's algorithm, iteratively)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[frozenset[str]] = []
    nodes = sorted(set(edges) | {n for targets in edges.values() for n in targets})
    for root in nodes:
        if root in order:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges.get(root, ()))))]
        order[root] = low[root] = len(order)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in order:
                    order[child] = low[child] = len(order)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], order[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == order[node]:
                group: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(frozenset(group))
    return groups


# ---------------------------------------------------------------- copying


@dataclass(frozen=True)
class Selection:
    """An artefact's share of the package: module names and data files (relative to the package folder)."""

    modules: frozenset[str]
    data: tuple[Path, ...]

    def files(self, package: Package) -> list[Path]:
        """Every file to copy, relative to the library folder."""
        code = [package.modules[name].relative_to(package.library) for name in self.modules]
        return sorted([*code, *(Path(PACKAGE) / path for path in self.data)])


def select(artefact: Artefact, package: Package, repo_root: Path = REPO_ROOT) -> Selection:
    modules = package.closure(artefact.entries, [repo_root / script for script in artefact.scripts])
    return Selection(frozenset(modules), tuple(package.data_for(modules)))


def copy(selection: Selection, package: Package, out: Path) -> int:
    """Copy the selection under ``out`` (``out/twopass/…``); the bytes copied."""
    target = out / PACKAGE
    if target.exists():
        shutil.rmtree(target)  # a stale module from an earlier build would ship unseen
    total = 0
    for relative in selection.files(package):
        destination = out / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(package.library / relative, destination)
        total += destination.stat().st_size
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python infra/closure.py",
        description="Copy the twopass modules (and package data) an artefact's entry points can import.",
    )
    parser.add_argument("artefact", nargs="?", choices=sorted(ARTEFACTS), help="which artefact's closure")
    parser.add_argument(
        "--library", type=Path, default=LIBRARY, help=f"folder holding {PACKAGE}/ (default: %(default)s)"
    )
    parser.add_argument(
        "--repo", type=Path, default=REPO_ROOT, help="where the artefact's scripts are (default: %(default)s)"
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help=f"copy into OUT/{PACKAGE}/ (replacing what is there)")
    action.add_argument("--list", action="store_true", help="print the files, one a line; copy nothing")
    action.add_argument("--check-layers", action="store_true", help="report imports LAYERS does not allow")
    args = parser.parse_args(argv)
    package = Package(args.library)
    if args.check_layers:
        problems = package.layer_problems()
        for problem in problems:
            print(problem, file=sys.stderr)
        for group in package.cycles():
            if group in KNOWN_CYCLES:
                print(f"known cycle, to be removed: {', '.join(sorted(group))}: {KNOWN_CYCLES[group]}")
        print(f"{len(package.modules)} modules, {len(problems)} layering problems")
        return 1 if problems else 0
    if args.artefact is None:
        parser.error("name an artefact: " + ", ".join(sorted(ARTEFACTS)))
    artefact = ARTEFACTS[args.artefact]
    selection = select(artefact, package, args.repo)
    if args.list:
        for path in selection.files(package):
            print(path)
        return 0
    size = copy(selection, package, args.out)
    print(
        f"{PACKAGE} for {artefact.about}: {len(selection.modules)} of {len(package.modules)} modules, "
        f"{len(selection.data)} data files, {size / 1024:.0f} KB -> {args.out / PACKAGE}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The configuration table in ``docs/configuration.md``, generated from ``twopass.config.Settings``.

Each row comes from one ``Settings`` field: the variable from its ``metadata["env"]``, the type
from its annotation, the default from the dataclass, and the meaning from the ``#:`` comment
written above the field (the field's documentation, as Sphinx reads it). A field without such
a comment is an error, so a new setting cannot ship unexplained.

    python -m infra.docs.settings_table           # rewrite the table
    python -m infra.docs.settings_table --check   # exit 1 when the committed table is stale
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from infra.docs import markers
from twopass.config import REPO_ROOT, Settings

PAGE = REPO_ROOT / "docs" / "configuration.md"
REGION = "settings"

_TYPES = {
    "str": "text",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "tuple[str, ...]": "comma-separated list",
}


class UndocumentedSettingError(ValueError):
    """A field of the settings class has no ``#:`` comment above it."""


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: its #: comment}`` for every annotated field of ``cls``, read from its source."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    (node,) = ast.parse(source).body
    assert isinstance(node, ast.ClassDef)
    docs: dict[str, str] = {}
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            comment: list[str] = []
            row = statement.lineno - 2  # the line above, 0-based
            while row >= 0 and lines[row].strip().startswith("#:"):
                comment.insert(0, lines[row].strip()[2:].strip())
                row -= 1
            docs[statement.target.id] = " ".join(comment)
    return docs


def _markdown(text: str) -> str:
    # The comments are reStructuredText (``literal``); the page is Markdown (`literal`).
    return re.sub(r"``(.+?)``", r"`\1`", text).replace("|", "\\|")


def _default(field: dataclasses.Field[Any]) -> str:
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    elif field.default is not dataclasses.MISSING:
        value = field.default
    else:
        return "(required)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`"
    if isinstance(value, str):
        if not value:
            return "—"
        path = Path(value)
        if path.is_absolute() and path.is_relative_to(REPO_ROOT):
            # Computed from where the package sits: show it relative to the checkout.
            return f"`{path.relative_to(REPO_ROOT)}`"
    return f"`{value}`"


def render(cls: type = Settings) -> str:
    """The Markdown table, one row per field of ``cls``, in declaration order."""
    docs = field_docs(cls)
    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        doc = docs.get(field.name, "")
        if not doc:
            raise UndocumentedSettingError(f"{cls.__name__}.{field.name} has no #: comment saying what it means")
        kind = _TYPES.get(str(field.type), str(field.type))
        rows.append(f"| `{field.metadata['env']}` | {kind} | {_default(field)} | {_markdown(doc)} |")
    return "\n".join(rows) + "\n"


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.docs.settings_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md differs; write nothing")
    args = parser.parse_args(argv)
    table = render()
    if args.check:
        current = markers.read(PAGE.read_text(), REGION)
        if current != table:
            print(f"{_shown(PAGE)} is stale: run python -m infra.docs.settings_table", file=sys.stderr)
            return 1
        return 0
    changed = markers.rewrite(PAGE, {REGION: table})
    print(f"{_shown(PAGE)}: {'rewritten' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

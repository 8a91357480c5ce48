"""Generated regions in Markdown pages: ``<!-- begin NAME -->`` … ``<!-- end NAME -->``.

Everything between a pair is owned by a script and rewritten whole; everything outside is prose.
The begin marker may carry a note after the name (who writes the region), kept as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path


class MarkerError(ValueError):
    """A page lacks a region it should have, or has one twice."""


def _pattern(name: str) -> re.Pattern[str]:
    begin = rf"<!-- begin {re.escape(name)}(?: [^>]*)? -->\n"
    end = rf"<!-- end {re.escape(name)} -->"
    return re.compile(rf"(?P<begin>{begin})(?P<body>.*?)(?P<end>{end})", re.S)


def names(text: str) -> list[str]:
    """The regions a page holds, in order."""
    return re.findall(r"<!-- begin ([\w.-]+)(?: [^>]*)? -->", text)


def read(text: str, name: str) -> str:
    """The body of region ``name`` (without its markers)."""
    found = list(_pattern(name).finditer(text))
    if len(found) != 1:
        raise MarkerError(f"expected one region {name!r}, found {len(found)}")
    return found[0]["body"]


def replace(text: str, bodies: Mapping[str, str]) -> str:
    """``text`` with each named region's body replaced (each body ends with a newline)."""
    for name, body in bodies.items():
        read(text, name)  # exactly one, or say which is missing
        found = _pattern(name).search(text)
        assert found is not None
        text = text[: found.start("body")] + body.rstrip("\n") + "\n" + text[found.end("body") :]
    return text


def rewrite(path: Path, bodies: Mapping[str, str]) -> bool:
    """Rewrite the regions in ``path``; ``True`` when the file changed."""
    old = path.read_text()
    new = replace(old, bodies)
    if new != old:
        path.write_text(new)
    return new != old


def page_main(
    page: Path, bodies: Callable[[], Mapping[str, str]], module: str, doc: str | None, argv: list[str] | None
) -> int:
    """The command line of a script that owns regions of ``page``: rewrite them, or ``--check`` them
    (exit 1, naming the command to run, when the page is out of date)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the page is up to date")
    args = parser.parse_args(argv)
    if args.check:
        current = page.read_text()
        if replace(current, bodies()) != current:
            print(f"{page} is out of date: run python -m {module}", file=sys.stderr)
            return 1
        return 0
    rewrite(page, bodies())
    return 0

"""The README and docs/ stay true to the code: every setting, template parameter, make target and link they name."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from twopass.config import REPO_ROOT, Settings
from twopass.local import template as tpl

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))


def _text(path: Path) -> str:
    return path.read_text()


def test_every_setting_is_documented() -> None:
    page = _text(REPO_ROOT / "docs" / "configuration.md")
    missing = [f.metadata["env"] for f in fields(Settings) if f"`{f.metadata['env']}`" not in page]
    assert missing == []


def test_every_template_parameter_is_documented() -> None:
    page = _text(REPO_ROOT / "docs" / "deploy.md")
    missing = [name for name in tpl.load()["Parameters"] if f"`{name}`" not in page]
    assert missing == []


def test_make_targets_named_in_the_docs_exist() -> None:
    makefile = _text(REPO_ROOT / "Makefile")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    assert {"run", "test"} <= set(re.findall(r"`make ([a-z-]+)", _text(README)))
    named = {name for page in [README, *DOCS] for name in re.findall(r"`make ([a-z-]+)", _text(page))}
    assert named <= targets


def test_relative_links_resolve() -> None:
    broken = []
    for page in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", _text(page)):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO_ROOT)} -> {target}")
    assert broken == []


def test_readme_links_every_docs_page() -> None:
    readme = _text(README)
    assert [p.name for p in DOCS if f"(docs/{p.name})" not in readme] == []

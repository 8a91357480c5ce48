"""The README stays true to the code: every setting, template parameter and make target it names."""

from __future__ import annotations

import re
from dataclasses import fields

from twopass.config import REPO_ROOT, Settings
from twopass.local import template as tpl

README = (REPO_ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [f.metadata["env"] for f in fields(Settings) if f"`{f.metadata['env']}`" not in README]
    assert missing == []


def test_every_template_parameter_is_documented() -> None:
    missing = [name for name in tpl.load()["Parameters"] if f"`{name}`" not in README]
    assert missing == []


def test_make_targets_named_in_the_readme_exist() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    named = set(re.findall(r"`make ([a-z-]+)", README))
    assert {"run", "test"} <= named
    assert named <= targets

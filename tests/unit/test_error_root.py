"""Every exception twopass defines is a ``TwopassError``: callers catch one root (FastAPI-style)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import twopass
from twopass.exceptions import TwopassError


def test_every_exception_the_package_defines_is_under_the_root() -> None:
    outside: list[str] = []
    for info in pkgutil.walk_packages(twopass.__path__, prefix="twopass."):
        if info.name.endswith(".__main__"):  # runs its command on import
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not issubclass(value, TwopassError)
            ):
                outside.append(f"{module.__name__}.{name}")
    assert not outside, f"exceptions outside TwopassError: {outside}"

"""Logging set-up shared by the API and the worker."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO") -> None:
    """Plain, readable lines on stderr unless something (Lambda, powertools) configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    logging.getLogger("twopass").setLevel(level.upper())
    root.setLevel(logging.WARNING if root.level == logging.NOTSET else root.level)

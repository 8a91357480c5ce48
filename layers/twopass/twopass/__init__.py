"""twopass: a fast model answers at once, a slow one follows through a queue."""

from __future__ import annotations

import os

# onnxruntime phones home (a DNS lookup of a telemetry host) a few seconds after a session is
# created unless this is set. Every twopass module imports this package first, so it is in place
# before any onnxruntime import, whoever the caller is.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

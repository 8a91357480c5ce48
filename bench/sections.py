"""The benchmark's sections, by the names ``bench/run.py --only`` takes, in the order a full run runs them.

Its own module because both the runner (which runs them) and the report (which says whether a run
measured all of them) need the list, and neither should import the other for it.
"""

from __future__ import annotations

SECTIONS = ("slow", "fast", "cold", "side", "peers", "gpu", "capacity", "overhead", "stack")

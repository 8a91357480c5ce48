"""``python -m bench.pinned CPUS MODULE [ARG...]``: run ``python -m MODULE`` on the given CPUs only.

CPUS is a comma-separated list of CPU numbers. The capacity validation gives the worker cores of
its own, as a GPU task has its instance to itself, instead of the leftovers of the API and emulator.
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python -m bench.pinned CPUS MODULE [ARG...]")
    cpus = {int(c) for c in sys.argv[1].split(",")}
    os.sched_setaffinity(0, cpus)
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

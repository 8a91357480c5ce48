"""``python -m twopass.local.lowpriority MODULE [ARG...]``: run ``python -m MODULE`` at a lower CPU priority.

The local stack starts its workers this way. On AWS a worker has its GPU instance to itself; here
it shares the machine's cores with the API, and the fast path (a client waiting for an HTTP answer)
must not queue behind slow-model batches that nobody waits on synchronously. The worker still gets
every cycle the API leaves idle, so its jobs finish as soon as requests stop arriving.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys

#: Added to the process's nice value (0 → 10): the scheduler then gives it about a tenth of a core
#: that a normal-priority process also wants, and all of one that nobody else wants.
NICENESS = 10


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m twopass.local.lowpriority MODULE [ARG...]")
    module = sys.argv[1]
    with contextlib.suppress(OSError, AttributeError):  # no os.nice on Windows; a refusal leaves it as is
        os.nice(NICENESS)
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

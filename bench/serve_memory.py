"""``python -m bench.serve_memory PORT``: the API as ``make run`` serves it, over in-memory backends.

The uvicorn command line is the local stack's own (:func:`twopass.local.stack.api_command`: its
HTTP protocol, event loop and limits), with one change: the app comes from
``bench.http_app:create_app`` (:class:`MemoryJobStore` + :class:`MemoryQueue`) instead of the
emulator-backed one, so a measurement shows the serving path and the fast model, not an emulator.
Run from a checkout's root, it serves that checkout's code (``bench/side_by_side.py`` starts one per
checkout it compares). ``BENCH_UVICORN_HTTP`` replaces the ``--http`` protocol for an experiment
(``httptools``, ``h11``, or a ``module:Class``).
"""

from __future__ import annotations

import os
import sys

APP = "twopass.api.app:create_app"
MEMORY_APP = "bench.http_app:create_app"


def command(port: int) -> list[str]:
    from twopass.local.stack import api_command

    args = api_command("127.0.0.1", port, max_header_bytes=16 * 1024)
    if APP not in args:
        raise SystemExit(f"the local stack's API command no longer names {APP}: {args}")
    args = [MEMORY_APP if arg == APP else arg for arg in args]
    # An experiment's override of the HTTP protocol (e.g. httptools), as uvicorn's --http takes it.
    http = os.environ.get("BENCH_UVICORN_HTTP")
    if http:
        args[args.index("--http") + 1] = http
    return args


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.serve_memory PORT")
    args = command(int(sys.argv[1]))
    os.execv(args[0], args)


if __name__ == "__main__":
    main()

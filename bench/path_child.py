"""One fast path in a process of its own, timed block by block on request (``bench/fast_path.py``).

``python -m bench.path_child raw|handler``: builds the path, answers ``ready``, then for each line
``N`` on stdin runs the path N times and answers the N durations (seconds, a JSON list). Its own
prints (the handler's EMF metrics, logs) go to stderr: stdout carries only the answers.

Why a process each: on Lambda the handler has its execution environment to itself. Two onnxruntime
sessions in one benchmark process share the cores with each other's thread pools, which skews
whichever of the two is measured against the other.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable


def build(kind: str) -> Callable[[], object]:
    from bench.common import cat_jpeg
    from bench.fast_path import RawFastPath, api_settings, check_ok, memory_handler, predict_event

    settings = api_settings({})
    if kind == "raw":
        raw, data = RawFastPath(settings.fast_model, settings.intra_op_threads), cat_jpeg()
        return lambda: raw(data)
    if kind == "handler":
        handler, event = memory_handler(settings), predict_event()
        return lambda: check_ok(handler(event))
    raise SystemExit(f"unknown path {kind!r}: raw or handler")


def main() -> None:
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # everything else printed goes to stderr
    call = build(sys.argv[1])
    call()
    print("ready", file=answers, flush=True)
    for line in sys.stdin:
        durations = []
        for _ in range(int(line)):
            t0 = time.perf_counter()
            call()
            durations.append(time.perf_counter() - t0)
        print(json.dumps(durations), file=answers, flush=True)


if __name__ == "__main__":
    main()

"""Fast-path preprocessing on extreme aspect ratios, before and after bounding it.

    python bench/preprocess_extremes.py                 # every case, before and after (~1 min, 2 cores)
    python bench/preprocess_extremes.py --skip-before   # the current code only

``twopass.imaging.load_tensor`` with the fast model's card (224, shorter side to 256) on a 40000x1 and
a 30000x2 PNG (a few hundred bytes each, built here with Pillow) and on each photo in ``tests/data``.
*Before* is ``imaging.py`` as of ``--before-rev`` (the resize-the-whole-image-then-crop pipeline),
loaded from git into a module of its own; *after* is the working tree's. Each case runs in a process
of its own, so its peak resident size (``ru_maxrss``) is that case's alone: the figure given is the
growth over the process's size just before the call, and the time is the call's median over
``--repeat`` runs (one run when a call takes over a second). A case is stopped at ``--timeout``
seconds or ``--memory-gib`` of address space (``RLIMIT_AS``) and recorded as such. The figures go to
stdout and to ``bench/results/preprocess_extremes.json``; ``--cases`` measures only those and updates
them in that file (e.g. the 40000x1 case before bounding, once, with a longer ``--timeout``: 28 s and
10 GB on an idle core, minutes on a busy one).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for entry in (str(REPO / "layers" / "twopass"), str(REPO)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from bench.common import RESULTS, log, machine, versions  # noqa: E402

#: The commit whose ``imaging.py`` resized the whole image before cropping.
BEFORE_REV = "f33ed55"
IMAGING = "layers/twopass/twopass/imaging.py"
STRIPS = {"40000x1": (40000, 1), "30000x2": (30000, 2)}
PHOTOS = sorted((REPO / "tests" / "data").glob("*.jpg"))
MAX_PIXELS = 40_000_000


def case_bytes(case: str) -> bytes:
    """The encoded image of ``case``: a strip built here (one colour: a PNG of a few hundred bytes) or a photo."""
    if case in STRIPS:
        import numpy as np
        from PIL import Image

        width, height = STRIPS[case]
        out = io.BytesIO()
        Image.fromarray(np.full((height, width, 3), (40, 160, 90), dtype=np.uint8)).save(out, format="PNG")
        return out.getvalue()
    return (REPO / "tests" / "data" / case).read_bytes()


def child(module_path: str, case: str, repeat: int) -> dict[str, Any]:
    """Runs in the measured process: import the pipeline, time ``load_tensor``, report the RSS peak's growth."""
    import importlib.util

    from twopass.models.card import Preprocessing

    spec = importlib.util.spec_from_file_location("imaging_under_test", module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = case_bytes(case)
    card = Preprocessing.for_input(224)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        tensor = module.load_tensor(data, card, max_pixels=MAX_PIXELS)
        times.append(time.perf_counter() - started)
        if times[-1] > 1.0:
            break
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "bytes": len(data),
        "shape": list(tensor.shape),
        "seconds": round(statistics.median(times), 6),
        "runs": len(times),
        "peak_rss_growth_mib": round((peak_kib - base_kib) / 1024, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }


def measure(module_path: Path, case: str, *, repeat: int, timeout: float, memory_gib: float) -> dict[str, Any]:
    """One case in a process of its own, capped in time and address space."""
    limit = int(memory_gib * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    command = [sys.executable, __file__, "--child", str(module_path), case, str(repeat)]
    started = time.perf_counter()
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, preexec_fn=cap, check=False)
    except subprocess.TimeoutExpired:
        return {"outcome": f"stopped after {timeout:g} s", "seconds": None, "peak_rss_growth_mib": None}

    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        over = "MemoryError" in out.stderr or "Cannot allocate" in out.stderr
        outcome = f"over {memory_gib:g} GiB of address space" if over else f"failed: {tail}"
        return {
            "outcome": outcome,
            "seconds": None,
            "peak_rss_growth_mib": None,
            "wall_s": time.perf_counter() - started,
        }
    return {"outcome": "ok", **json.loads(out.stdout)}


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 2)


def before_module(rev: str, into: Path) -> Path:
    """``imaging.py`` as of ``rev``, written to a file of its own (never imported as ``twopass.imaging``)."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:{IMAGING}"], capture_output=True, text=True, check=True
    ).stdout
    path = into / "imaging_before.py"
    path.write_text(source)
    return path


def _cell(measured: dict[str, Any], key: str, width: int) -> str:
    """A figure, or why there is none (the case was stopped, or not run)."""
    value = measured.get(key)
    if value is not None:
        return f"{value:>{width}}"
    return f"{(measured.get('outcome') or '-')[:width]:>{width}}"


def table(results: dict[str, Any]) -> str:
    lines = [
        f"Fast-path preprocessing (load_tensor, 224 card) on {results['machine']['cpus']} CPUs, {results['date']}",
        f"{'case':<16} {'bytes':>6} {'before s':>10} {'before MiB':>11} {'after s':>9} {'after MiB':>10}",
    ]
    for case, row in results["cases"].items():
        before, after = row.get("before", {}), row["after"]
        cells = [
            _cell(before, "seconds", 10),
            _cell(before, "peak_rss_growth_mib", 11),
            _cell(after, "seconds", 9),
            _cell(after, "peak_rss_growth_mib", 10),
        ]
        lines.append(f"{case:<16} {after.get('bytes', ''):>6} " + " ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(child(argv[1], argv[2], int(argv[3]))))
        return 0
    parser = argparse.ArgumentParser(prog="python bench/preprocess_extremes.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-rev", default=BEFORE_REV, help="git revision of the pipeline before bounding")
    parser.add_argument("--skip-before", action="store_true", help="measure the current code only")
    parser.add_argument("--repeat", type=int, default=20, help="calls per case (the median is given)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a case is stopped")
    parser.add_argument("--memory-gib", type=float, default=12.0, help="address space a case may take")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where preprocess_extremes.json goes")
    parser.add_argument("--cases", nargs="*", help="only these cases (e.g. 40000x1 coffee.jpg)")
    args = parser.parse_args(argv)

    cases = [c for c in (*STRIPS, *(p.name for p in PHOTOS)) if not args.cases or c in args.cases]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "before_rev": None if args.skip_before else args.before_rev,
        "machine": machine(),
        "versions": versions(),
        "limits": {"timeout_s": args.timeout, "memory_gib": args.memory_gib, "repeat": args.repeat},
        "cases": {},
    }
    after_path = REPO / IMAGING
    with tempfile.TemporaryDirectory(prefix="twopass-preprocess-") as scratch:
        before_path = None if args.skip_before else before_module(args.before_rev, Path(scratch))
        for case in cases:
            row: dict[str, Any] = {}
            for label, path in (("before", before_path), ("after", after_path)):
                if path is None:
                    continue
                log(f"{case}: {label} …")
                row[label] = measure(path, case, repeat=args.repeat, timeout=args.timeout, memory_gib=args.memory_gib)
            row["limits"] = dict(results["limits"])
            row["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
            results["cases"][case] = row
    path = args.out / "preprocess_extremes.json"
    if args.cases and path.exists():
        # A run of some cases updates them in the last full run's file and keeps the others.
        earlier = json.loads(path.read_text())
        results = {**results, "cases": {**earlier.get("cases", {}), **results["cases"]}}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    sys.exit(main())

"""Callback sender under hostile receivers: memory against an endless body, delay behind trickling ones.

    python bench/callbacks.py                                   # this checkout's sender (~25 s)
    python bench/callbacks.py --lib /tmp/old/layers/twopass --label before   # another version's

Each figure runs a :class:`~twopass.notify.sender.CallbackSender` in a process of its own (the
library from ``--lib``), as the worker runs it, against receivers on 127.0.0.1 (``tests/receivers.py``):

- **endless body**: one callback to a receiver that answers ``200`` and then streams a chunked body
  that never ends, at ``--rate`` MB/s for ``--seconds`` s. Figure: the sender process's RSS growth
  (peak VmRSS minus VmRSS just before the submit), and the bytes the receiver got to send.
- **healthy behind trickling**: five callbacks to four receivers that answer one byte every 2 s
  (the first gets two), then, once those are connected, one to a healthy receiver. Figure: the delay
  from that submit to the healthy receiver having the request (``null``: not within ``--window`` s).

The figures go to stdout and to ``bench/results/callbacks.json`` under ``--label`` (other labels kept).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for entry in (str(REPO / "layers" / "twopass"), str(REPO)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from bench.common import RESULTS, log  # noqa: E402
from tests.receivers import HostileReceiver  # noqa: E402

SECRET = "bench-callback-secret"
MB = 1024 * 1024


#: The sender's process (run with ``PYTHONPATH=<lib>``): submit ``plan["urls"]`` (the last after
#: ``last_after`` s), then wait to be killed. Code of its own, so nothing of this checkout is imported.
CHILD = """
import json, sys, time
from twopass.notify.sender import CallbackSender

plan = json.loads(sys.argv[1])
sender = CallbackSender(plan["secret"], allow_private=True, allow_http=True)
print("ready", flush=True)
time.sleep(0.5)  # the parent reads the baseline RSS now
*first, last = plan["urls"]
for i, url in enumerate(first):
    sender.submit(url, {"job_id": f"hostile-{i}", "status": "succeeded"})
time.sleep(plan.get("last_after", 0.0))
print(f"submitted {time.time()}", flush=True)
sender.submit(last, {"job_id": "last", "status": "succeeded"})
time.sleep(3600)
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start_sender(lib: str, plan: dict[str, Any]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": lib}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps({**plan, "secret": SECRET})],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd="/",
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the sender process did not start")
    return proc


def endless_body(lib: str, rate_mb: float, seconds: float) -> dict[str, Any]:
    with HostileReceiver("endless", rate=rate_mb * MB if rate_mb > 0 else None) as receiver:
        proc = start_sender(lib, {"urls": [receiver.url]})
        try:
            baseline = rss_mb(proc.pid)
            deadline = time.monotonic() + 10
            while not receiver.connections and time.monotonic() < deadline:
                time.sleep(0.02)
            peak = baseline
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                peak = max(peak, rss_mb(proc.pid))
                time.sleep(0.1)
            conn = receiver.connections[0] if receiver.connections else None
            held = None if conn is None or conn.closed_at is None else conn.closed_at - conn.opened_at
        finally:
            proc.kill()
            proc.wait()
    return {
        "rate_mb_s": rate_mb or None,
        "seconds": seconds,
        "rss_baseline_mb": round(baseline, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_growth_mb": round(peak - baseline, 1),
        "receiver_sent_mb": round(receiver.sent / MB, 2),
        "connection_held_s": None if held is None else round(held, 2),
    }


def healthy_behind_trickling(lib: str, window: float) -> dict[str, Any]:
    hostile = [HostileReceiver("trickle", interval=2.0) for _ in range(4)]
    healthy = HostileReceiver("healthy")
    for receiver in (*hostile, healthy):
        receiver.__enter__()
    try:
        urls = [hostile[0].url, *(r.url for r in hostile), healthy.url]
        proc = start_sender(lib, {"urls": urls, "last_after": 1.5})
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            submitted = float(line[1])
            connected = sum(r.open_connections for r in hostile)
            end = time.monotonic() + window
            while not healthy.requests and time.monotonic() < end:
                time.sleep(0.01)
            got = healthy.requests
        finally:
            proc.kill()
            proc.wait()
    finally:
        for receiver in (*hostile, healthy):
            receiver.__exit__()
    return {
        "hostile_receivers": len(hostile),
        "hostile_callbacks": len(urls) - 1,
        "hostile_connections_open_at_submit": connected,
        "window_s": window,
        "healthy_delay_s": round(got[0].at - submitted, 3) if got else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", default=str(REPO / "layers" / "twopass"), help="where the twopass package is")
    parser.add_argument("--label", default="current", help="key of these figures in callbacks.json")
    parser.add_argument("--rate", type=float, default=20.0, help="endless body's MB/s (0: unthrottled)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the endless body is watched")
    parser.add_argument("--window", type=float, default=30.0, help="how long to wait for the healthy callback")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where callbacks.json goes")
    args = parser.parse_args(argv)

    log(f"endless body at {args.rate or 'unthrottled'} MB/s for {args.seconds} s …")
    figures: dict[str, Any] = {"endless_body": endless_body(args.lib, args.rate, args.seconds)}
    log("healthy callback behind four trickling receivers …")
    figures["healthy_behind_trickling"] = healthy_behind_trickling(args.lib, args.window)
    figures["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps({args.label: figures}, indent=2))

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "callbacks.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[args.label] = figures
    path.write_text(json.dumps(saved, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

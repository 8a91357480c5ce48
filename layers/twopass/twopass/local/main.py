"""``python -m twopass.local``: run the whole service on this machine until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from twopass.local.stack import DEFAULT_API_KEY, LocalStack


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m twopass.local",
        description="Start the AWS emulator (moto server), create the queues and table from template.yaml, "
        "and run the API (uvicorn) and the slow-model worker(s) on loopback. Ctrl-C stops everything.",
    )
    parser.add_argument("--api-port", type=int, default=3000, help="API port (default 3000)")
    parser.add_argument("--emulator-port", type=int, default=4566, help="moto server port (default 4566)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--log-dir", type=Path, help="write each process's log here instead of the terminal")
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help=f"key the API requires in the x-api-key header (default {DEFAULT_API_KEY!r}; '' turns auth off)",
    )
    args = parser.parse_args(argv)

    stack = LocalStack(
        api_port=args.api_port,
        emulator_port=args.emulator_port,
        workers=args.workers,
        log_dir=args.log_dir,
        api_key=args.api_key or None,
    )
    stopping = False

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"starting twopass locally (emulator on {stack.endpoint_url}) …", file=sys.stderr)
    stack.start()
    url = stack.api_url
    key = f" -H 'x-api-key: {stack.api_key}'" if stack.api_key else ""
    print(
        f"""
twopass is running on {url}
  queue    {stack.service_env.get("TWOPASS_QUEUE_URL")}
  table    {stack.service_env.get("TWOPASS_TABLE_NAME")}
  api key  {stack.api_key or "(none: auth off)"}  (send it as x-api-key; /health is open)

Try:
  curl {url}/health
  curl{key} {url}/predict/test
  curl{key} -X POST -H 'Content-Type: image/jpeg' --data-binary @tests/data/coffee.jpg {url}/predict
  (echo -n '{{"image_data": "'; base64 -w0 tests/data/astronaut.jpg; echo '"}}') | \\
      curl{key} -X POST -H 'Content-Type: application/json' -d @- {url}/predict
  curl{key} {url}/job/<job_id>
  curl{key} {url}/health/all
  TWOPASS_API_KEY={stack.api_key or ""} twopass predict tests/data --wait --url {url}
  open {url}/docs

Ctrl-C stops everything.
""",
        flush=True,
    )
    try:
        while not stopping:
            dead = [name for name, alive in stack.alive().items() if not alive]
            if dead:
                print(f"process(es) exited: {', '.join(dead)}; stopping", file=sys.stderr)
                return_code = 1
                break
            time.sleep(0.5)
        else:
            return_code = 0
    finally:
        print("stopping …", file=sys.stderr)
        stack.stop()
    return return_code

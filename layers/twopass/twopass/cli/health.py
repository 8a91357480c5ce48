"""``twopass health``: the service's health (``GET /health``, or every backend's with ``--all``)."""

from __future__ import annotations

import argparse
import json

from twopass.cli import common
from twopass.cli.common import EXIT_OK, EXIT_UNAVAILABLE, Command, Subparsers, error, exit_code_for, runs
from twopass.client import ClientError, Health


def register(sub: Subparsers[argparse.ArgumentParser], common_options: argparse.ArgumentParser) -> None:
    health = sub.add_parser(
        "health", parents=[common_options], help="check the service", description="GET /health (or /health/all)."
    )
    health.add_argument("--all", action="store_true", help="every backend (GET /health/all)")
    health.add_argument("--json", action="store_true", help="print the server's JSON")
    runs(health, Command(run))


def run(args: argparse.Namespace) -> int:
    try:
        # Looked up on the module when called, so a test can give the client another transport.
        with common.CliClient(**common.client_options(args)) as client:
            health = client.health_all() if args.all else client.health()
    except ClientError as exc:
        error(str(exc))
        return exit_code_for(exc)
    if args.json:
        print(json.dumps(dict(health.raw), indent=2))
    else:
        print(format_health(health))
    return EXIT_OK if health.ok else EXIT_UNAVAILABLE


def format_health(health: Health) -> str:
    lines = [health.status]
    for name, check in health.backends.items():
        if isinstance(check, dict):
            # Scalars that say something: nested detail (per-worker stats) is what --json is for.
            shown = [f"{k}={v}" for k, v in check.items() if v is not None and not isinstance(v, dict | list)]
            extra = ", ".join(item for item in shown if not item.startswith("status="))
            lines.append(f"  {name:<12} {check.get('status', '?')}" + (f"  ({extra})" if extra else ""))
        else:
            lines.append(f"  {name:<12} {check}")
    return "\n".join(lines)

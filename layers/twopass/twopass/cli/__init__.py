"""``twopass``: classify photos, look up jobs, check health, run the local stack, and the operators' tools.

One parser: each command module registers its subcommands (:data:`COMMANDS`, in the order ``twopass
--help`` lists them) and the :class:`~twopass.cli.common.Command` each runs, so every argument is parsed
once. Standard library and the client SDK only (so httpx), so installing the package without its extras
(``pip install .`` or ``pipx install .`` in a clone) gives a working CLI; ``twopass local``,
``twopass redrive``, ``twopass calibrate`` and ``twopass model`` alone need the server packages, which
their modules import only when they run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Final

from twopass import __version__
from twopass.cli import calibrate, capacity, health, jobs, local, model, predict, redrive
from twopass.cli.common import (
    COMMAND,
    EPILOG,
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Command,
)
from twopass.cli.options import common_options

__all__ = [
    "COMMANDS",
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

#: The command modules, each with ``register(subparsers, common_options)``.
COMMANDS: Final = (predict, jobs, health, redrive, capacity, calibrate, model, local)


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="twopass",
        description="Classify images with a twopass deployment: a fast label at once, a slow one from the queue.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"twopass {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the epilog) instead of exiting."""
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        command: Command | None = getattr(args, COMMAND, None)
        if command is not None and command.forwards:
            args.forwarded = extras
        elif extras:
            (command.usage if command and command.usage else parser).error(
                f"unrecognized arguments: {' '.join(extras)}"
            )
        if command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
    except SystemExit as exc:  # --help, --version and usage errors: argparse exits; we return
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return command.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

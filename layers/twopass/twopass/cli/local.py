"""``twopass local``: run the whole service on this machine, as ``python -m twopass.local`` does.

Everything after ``local`` (``--help`` included) is ``python -m twopass.local``'s to parse: ``twopass``
declares none of it, so each argument is read once, by the local stack's own parser. The stack itself
(moto, uvicorn, onnxruntime…) is imported only when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Final

from twopass.cli.common import EXIT_USAGE, Command, Subparsers, error, missing, runs

#: What the local stack imports in its children or deep in start-up; checked first so a client-only
#: install gets one clear sentence rather than a traceback half-way through starting.
LOCAL_NEEDS: Final = ("boto3", "moto", "samtranslator", "uvicorn", "fastapi", "onnxruntime", "numpy", "PIL")


def register(sub: Subparsers[argparse.ArgumentParser], common_options: argparse.ArgumentParser) -> None:
    local = sub.add_parser(
        "local",
        add_help=False,
        help="run the whole service on this machine (needs the server extras; `twopass local --help`)",
    )
    runs(local, Command(run, forwards=True))


def run(args: argparse.Namespace) -> int:
    argv: list[str] = args.forwarded
    absent = missing(LOCAL_NEEDS)
    if absent and not {"-h", "--help"} & set(argv):
        error(
            f"`twopass local` needs the server packages ({', '.join(absent)} missing): in a clone of the "
            "repository, `make run` installs them into .venv, or pip install -e '.[local]'"
        )
        return EXIT_USAGE
    from twopass.local.main import main as local_main

    return local_main(argv)

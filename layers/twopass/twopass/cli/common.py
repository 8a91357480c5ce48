"""What every ``twopass`` command shares: exit codes, the error line, the API client as the CLI builds it,
and how a command declares itself to the parser.

Standard library and the client SDK only (so httpx): the command modules import this at start-up,
whatever the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from twopass.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ModelResult,
    NotTwopassError,
    RateLimitedError,
    ServerError,
    TransportError,
    WaitTimeoutError,
    hints,
)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_TIMEOUT: Final = 4
EXIT_AUTH: Final = 5
EXIT_INTERRUPTED: Final = 130
# When files end differently, the code that tells a script the most wins.
PRIORITY: Final = (EXIT_AUTH, EXIT_UNAVAILABLE, EXIT_TIMEOUT, EXIT_FAILED)

EPILOG: Final = """\
exit codes:
  0  success (with --wait: every job succeeded)
  1  some job failed, was cancelled or expired, or was not found; the server refused an image,
     a cancel (the job had ended) or a retry (wrong state, its image gone or replaced)
  2  usage error (bad option, no such path, no image files)
  3  server unreachable or unavailable (after retries), not a twopass API (check --url),
     or /health/all degraded
  4  --wait ran out of time before some job finished
  5  API key missing or refused
  When files end differently the first that applies of 5, 3, 4, 1 is returned.

environment:
  TWOPASS_URL      default for --url (else http://127.0.0.1:3000, where `twopass local` serves)
  TWOPASS_API_KEY  default for --api-key (the local stack of `make run` takes local-dev-key)

examples:
  twopass predict photos/ --wait
  twopass predict a.jpg b.png --json | jq .fast.label
  twopass job 3f0c9e0d4b0e4f6f9a5a2d1c7b8e9f00 --wait
  twopass predict urgent.jpg --priority high --deadline 60
  twopass jobs --status failed
  twopass retry 3f0c9e0d4b0e4f6f9a5a2d1c7b8e9f00
  twopass health --all
"""

#: argparse's type for the object ``add_subparsers`` returns, which each command module adds to.
Subparsers = argparse._SubParsersAction


@dataclass(frozen=True)
class Command:
    """What the parser stores for a subcommand (under :data:`COMMAND`): how to run it, and how it parses."""

    run: Callable[[argparse.Namespace], int]
    #: The parser whose usage an unrecognised argument is reported with; ``None``: ``twopass``'s own.
    #: The operator tools (cost, plan, calibrate, model) keep the usage line they had as separate commands.
    usage: argparse.ArgumentParser | None = None
    #: Arguments the parser does not know are the command's (in ``args.forwarded``), not an error.
    forwards: bool = False


#: The namespace attribute holding the chosen subcommand's :class:`Command`.
COMMAND: Final = "cli_command"


def runs(parser: argparse.ArgumentParser, command: Command) -> None:
    """Make ``command`` what a parse that reaches ``parser`` runs."""
    parser.set_defaults(**{COMMAND: command})


def error(message: str) -> None:
    print(f"twopass: error: {message}", file=sys.stderr)


def worst(codes: Iterable[int]) -> int:
    """The exit code for several outcomes: the first of :data:`PRIORITY` among them, else success."""
    seen = set(codes)
    return next((code for code in PRIORITY if code in seen), EXIT_OK)


def exit_code_for(exc: Exception) -> int:
    if isinstance(exc, AuthenticationError):
        return EXIT_AUTH
    # Rate limiting that outlasts the retries is the service being unavailable to this caller; a URL
    # where no twopass API answers is a service this caller cannot reach.
    if isinstance(exc, TransportError | ServerError | RateLimitedError | NotTwopassError):
        return EXIT_UNAVAILABLE
    if isinstance(exc, WaitTimeoutError):
        return EXIT_TIMEOUT
    return EXIT_FAILED


def missing(modules: Sequence[str]) -> list[str]:
    """Which of ``modules`` cannot be imported here (a client-only install lacks the server packages)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


# -- the API client -----------------------------------------------------------------------------


class CliClient(Client):
    # Error messages name the CLI's options (--url, --api-key) rather than the SDK's arguments.
    _hint_style = hints.CLI


class CliAsyncClient(AsyncClient):
    _hint_style = hints.CLI


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The client's arguments from the global options (absent when not given: the client's defaults)."""
    return {
        "base_url": getattr(args, "url", None),
        "api_key": getattr(args, "api_key", None),
        "retries": getattr(args, "retries", 3),
        "timeout": getattr(args, "http_timeout", 30.0),
    }


def label(result: ModelResult | None) -> str:
    """``tabby (0.83)``: a model's top label as the tables show it."""
    if result is None:
        return ""
    prob = result.probability
    return f"{result.label} ({prob:.2f})" if prob is not None else result.label

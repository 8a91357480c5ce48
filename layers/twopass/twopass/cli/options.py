"""Argument types the commands share, and the global options (``--url``, ``--api-key``…) that the
commands talking to the API accept before or after their name."""

from __future__ import annotations

import argparse

from twopass.client import DEFAULT_URL


def common_options() -> argparse.ArgumentParser:
    """The global options, accepted before or after the subcommand (a parent parser)."""
    # SUPPRESS keeps a value given before the subcommand from being overwritten by its default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"twopass API base URL (default: $TWOPASS_URL or {DEFAULT_URL})"
    )
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="API key sent as x-api-key ($TWOPASS_API_KEY)")
    common.add_argument(
        "--retries", type=non_negative_int, default=argparse.SUPPRESS, help="retries per request (default 3)"
    )
    common.add_argument(
        "--http-timeout", type=positive_float, default=argparse.SUPPRESS, help="seconds per HTTP request (default 30)"
    )
    return common


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def deadline(text: str) -> float:
    value = float(text)
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be at least 1 second, got {text}")
    return value

"""``make sam-local``'s command line, without Docker: what makes CORS work under ``sam local start-api``.

SAM CLI answers every preflight itself from the Api's ``Cors``, which the template derives from
``CorsAllowOrigins``; ``make sam-local`` passes the function's origins there, as one parameter sets
both on AWS. ``test_sam_local_cors.py`` checks the result against a real ``sam local start-api``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from twopass.local import samlocal


def test_sam_gets_the_functions_origins_as_cors_allow_origins() -> None:
    """SAM answers preflights from the template's Cors, which follows CorsAllowOrigins: the function's
    own setting goes there too, else SAM allows no origin ("null") while the function allows some."""
    assert samlocal.template_parameters({"TWOPASS_CORS_ALLOW_ORIGINS": "http://localhost:*, http://127.0.0.1:*"}) == {
        "CorsAllowOrigins": "http://localhost:*,http://127.0.0.1:*"
    }
    assert samlocal.template_parameters({"TWOPASS_CORS_ALLOW_ORIGINS": ""}) == {}
    assert samlocal.template_parameters({}) == {}


def test_start_api_passes_the_parameters_before_the_callers_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = samlocal.SamLocal(sam="sam", api_port=3001, sam_args=["--warm-containers", "EAGER"], log_dir=tmp_path)
    runner.function_vars = {"TWOPASS_CORS_ALLOW_ORIGINS": "https://app.example.com"}
    spawned: list[list[str]] = []
    monkeypatch.setattr(runner.children, "spawn", lambda name, args, env, **kw: spawned.append(args))
    runner.start_api()
    (args,) = spawned
    at = args.index("--parameter-overrides")
    assert args[at + 1] == "CorsAllowOrigins=https://app.example.com"
    # Caller's arguments last: a --parameter-overrides of theirs replaces this one.
    assert args[-2:] == ["--warm-containers", "EAGER"] and at < len(args) - 2

    runner.function_vars = {"TWOPASS_CORS_ALLOW_ORIGINS": ""}
    runner.start_api()
    assert "--parameter-overrides" not in spawned[-1]

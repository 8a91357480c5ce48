"""``python -m twopass.local``: run the whole service on this machine until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from twopass.config import REPO_ROOT
from twopass.local.cognito import DEMO_PASSWORD, DEMO_USER
from twopass.local.foreground import Foreground
from twopass.local.services import ServiceEnv
from twopass.local.stack import DEFAULT_API_KEY, STOP_TIMEOUT, LocalStack

#: Seconds between two supervision rounds (how soon a dead worker or API is noticed).
SUPERVISE_EVERY = 0.2


def _shown(path: Path) -> str:
    """``path`` as the user can type it from where they are: relative when below the current folder."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def twopass_command() -> str:
    """The ``twopass`` command to suggest: this interpreter's own (``.venv/bin/twopass`` under ``make run``)."""
    script = Path(sys.executable).parent / "twopass"  # not resolved: the virtualenv's bin, not the base python's
    return _shown(script) if script.exists() else "twopass"


def settings_lines(environment: ServiceEnv) -> str:
    """Every setting of the API and workers that is not the code's default, ``name=value  (where from)``,
    secrets masked: what this stack runs with, the model packs of ``make run FAST_MODEL=…`` included."""
    listed = [(f"{name}={value}", origin) for name, value, origin in environment.not_default()]
    width = min(max((len(setting) for setting, _ in listed), default=0), 64)
    lines = [f"  {setting:<{width}}  ({origin})\n" for setting, origin in listed]
    if environment.unused_from_shell:
        # Said out loud: a queue URL left in the shell from another session would otherwise look used.
        lines.append(f"  not taken from the shell: {', '.join(environment.unused_from_shell)} (this stack's own)\n")
    return "".join(lines)


def banner(stack: LocalStack) -> str:
    url = stack.api_url
    keys = stack.api_keys
    key = f" -H 'x-api-key: {keys[0]}'" if keys else ""
    data = _shown(REPO_ROOT / "tests" / "data")
    secret = stack.callback_secret
    no_key = "(none: user tokens instead, below)" if stack.user_pool else "(none: auth off)"
    return f"""
twopass is running on {url}
  queue            {stack.service_env.get("TWOPASS_QUEUE_URL")}
  table            {stack.service_env.get("TWOPASS_TABLE_NAME")}
  api key          {", ".join(keys) or no_key}  (send it as x-api-key; /health is open)
  callback secret  {secret or "(none: callbacks off)"}  (signs callbacks: twopass.notify.verify(secret, body, header))

Settings not at their defaults (a TWOPASS_* setting in your shell wins over template.yaml's; docs/configuration.md):
{settings_lines(stack.environment())}
Try:
  curl {url}/health
  curl{key} {url}/predict/test
  curl{key} -X POST -H 'Content-Type: image/jpeg' --data-binary @{data}/coffee.jpg {url}/predict
  (echo -n '{{"image_data": "'; base64 -w0 {data}/astronaut.jpg; echo '"}}') | \\
      curl{key} -X POST -H 'Content-Type: application/json' -d @- {url}/predict
  curl{key} {url}/job/<job_id>
  curl{key} {url}/health/all
  TWOPASS_API_KEY={keys[0] if keys else ""} {twopass_command()} predict {data} --wait --url {url}
  open {url}/docs
  open {url}/demo{"#key=" + keys[0] if keys else ""}

A worker that dies is restarted. Ctrl-C stops everything.
{_sign_in_help(stack)}"""


def _sign_in_help(stack: LocalStack) -> str:
    pool = stack.user_pool
    if pool is None:
        return ""
    sign_in = json.dumps(
        {
            "AuthFlow": "USER_PASSWORD_AUTH",
            "ClientId": pool.client_id,
            "AuthParameters": {"USERNAME": DEMO_USER, "PASSWORD": DEMO_PASSWORD},
        }
    )
    return f"""
Signed-in users (AuthMode cognito): the emulator's user pool {pool.pool_id}, app client {pool.client_id}.
  user {DEMO_USER!r}, password {DEMO_PASSWORD!r}: sign in on {stack.api_url}/demo, or get a token with
  TOKEN=$(curl -s {stack.endpoint_url}/ -H 'Content-Type: application/x-amz-json-1.1' \\
      -H 'X-Amz-Target: AWSCognitoIdentityProviderService.InitiateAuth' \\
      -d '{sign_in}' \\
      | python3 -c 'import json, sys; print(json.load(sys.stdin)["AuthenticationResult"]["IdToken"])')
  curl -H "Authorization: Bearer $TOKEN" {stack.api_url}/jobs
"""


def _configure_logging() -> None:
    # The supervisor's own messages (worker restarts) in the terminal, without turning on every
    # library's INFO logging in this process.
    log = logging.getLogger("twopass.local")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("twopass.local: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m twopass.local",
        description="Start the AWS emulator (moto server), create the queues and table from template.yaml, "
        "and run the API (uvicorn) and the slow-model worker(s) on loopback. A worker that dies is restarted "
        "with backoff; if the API or the emulator dies, everything stops. Ctrl-C stops everything: "
        f"workers, then the API, then the emulator; what has not exited after {STOP_TIMEOUT:.0f} s is killed.",
    )
    parser.add_argument("--api-port", type=int, default=3000, help="API port (default 3000)")
    parser.add_argument("--emulator-port", type=int, default=4566, help="moto server port (default 4566)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--log-dir", type=Path, help="write each process's log here instead of the terminal")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"key the API requires in the x-api-key header (default {DEFAULT_API_KEY!r}, none with "
        "--auth-mode cognito); several keys comma-separated; '' turns auth off",
    )
    parser.add_argument(
        "--auth-mode",
        choices=("apikey", "cognito"),
        default="apikey",
        help="apikey (default), or cognito: a user pool and a demo user in the emulator, and the API "
        "requires their tokens (Authorization: Bearer <JWT>)",
    )
    return parser


def _supervised(stack: LocalStack) -> str | None:
    """One round of supervision; why everything must stop, if it must."""
    fatal = stack.supervise()
    if not fatal:
        return None
    where = f" (logs in {stack.log_dir})" if stack.log_dir else ""
    return f"{'; '.join(fatal)}: stopping everything{where}"


def _check_models() -> str | None:
    """An invalid model pack stops the stack before it starts, with the services' own line."""
    from twopass.config import Settings
    from twopass.exceptions import ModelLoadError
    from twopass.models.pack import preflight

    settings = Settings.from_env()
    try:
        preflight(settings.fast_model, settings.slow_model)
    except ModelLoadError as exc:
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _configure_logging()
    refused = _check_models()
    if refused:
        print(f"twopass local: {refused}", file=sys.stderr)
        return 2
    stack = LocalStack(
        api_port=args.api_port,
        emulator_port=args.emulator_port,
        workers=args.workers,
        log_dir=args.log_dir,
        api_key=(DEFAULT_API_KEY if args.auth_mode == "apikey" else "")
        if args.api_key is None
        else args.api_key or None,
        auth_mode=args.auth_mode,
    )
    foreground = Foreground(interrupted="stopped while starting", failed="could not start the local stack")
    print(f"starting twopass locally (emulator on {stack.endpoint_url}) …", file=sys.stderr)
    failed = foreground.start(stack.start)  # the stack stops what it started if it fails or is interrupted
    if failed is not None:
        return failed
    print(banner(stack), flush=True)
    try:
        return foreground.watch(lambda: _supervised(stack), SUPERVISE_EVERY)
    finally:
        started = time.monotonic()
        print("stopping: workers, API, emulator …", file=sys.stderr, flush=True)
        stack.stop()
        print(f"stopped in {time.monotonic() - started:.1f} s", file=sys.stderr)

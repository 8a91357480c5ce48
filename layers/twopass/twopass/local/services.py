"""What a local stack's children share: the emulator (started as a child, its clients, the environment
that points a child at it), the API's and workers' environment, and the worker's command line.
``make run`` (:mod:`twopass.local.stack`) and ``make sam-local`` (:mod:`twopass.local.samlocal`) both
build on these.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twopass.config import REPO_ROOT
from twopass.local.processes import Children, wait_http

STACK_NAME = "twopass-local"
#: What a laptop does differently from AWS: no X-Ray daemon, no EMF collector, callbacks to the
#: tests' own receivers on loopback, a fixed callback secret that the banner prints.
LOCAL_DEFAULTS = {
    "TWOPASS_PROVIDERS": "cpu",
    "TWOPASS_CALLBACK_SECRET": "local-callback-secret",
    "TWOPASS_CALLBACK_ALLOW_PRIVATE": "true",
    "TWOPASS_CALLBACK_ALLOW_HTTP": "true",
}
#: Local defaults where the template leaves a setting empty: a front-end dev server on this machine
#: (any port) may call the API.
LOCAL_WHEN_EMPTY = {"TWOPASS_CORS_ALLOW_ORIGINS": "http://localhost:*,http://127.0.0.1:*"}
#: On locally whatever the template's default (the shell may still say otherwise): the demo page at /demo.
LOCAL_ON = {"TWOPASS_DEMO": "true"}
#: Switched off locally whatever the template says: there is no X-Ray daemon or EMF collector here.
LOCAL_FORCED = {"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_TRACE_DISABLED": "true"}
#: The local API checks this key like API Gateway checks usage-plan keys in front of the function.
DEFAULT_API_KEY = "local-dev-key"
#: Credentials and region the emulator accepts; never real ones.
EMULATOR_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}
#: One worker process (its settings come from the environment), at a lower CPU priority than the API
#: it shares this machine's cores with (see twopass.local.lowpriority).
WORKER_COMMAND = (sys.executable, "-m", "twopass.local.lowpriority", "twopass.worker")


@dataclass(frozen=True)
class Emulator:
    """The AWS emulator (``python -m twopass.local.emulator``) at ``host:port``."""

    host: str = "127.0.0.1"
    port: int = 4566

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, children: Children) -> subprocess.Popen[bytes]:
        """Start it as the child ``emulator`` and wait until it answers."""
        proc = children.spawn(
            "emulator",
            [sys.executable, "-m", "twopass.local.emulator", "-H", self.host, "-p", str(self.port)],
            self.child_env(),
            # One access-log line per long poll would drown the API's and the worker's logs.
            quiet=True,
        )
        wait_http(f"{self.url}/moto-api/", 60, proc)
        return proc

    def child_env(self) -> dict[str, str]:
        """This process's environment, pointed at the emulator with its credentials."""
        env = dict(os.environ)
        env.update(EMULATOR_ENV)
        env["AWS_ENDPOINT_URL"] = self.url
        env["PYTHONUNBUFFERED"] = "1"
        # Children import twopass from this checkout even when it is not installed.
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT / "layers" / "twopass"), env.get("PYTHONPATH")])
        )
        return env

    def client(self, service: str) -> Any:
        """A boto3 client of the emulator."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=EMULATOR_ENV["AWS_REGION"],
            aws_access_key_id=EMULATOR_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=EMULATOR_ENV["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=EMULATOR_ENV["AWS_SESSION_TOKEN"],
        )


def local_switches(env: Mapping[str, str], shell: Mapping[str, str]) -> dict[str, str]:
    """:data:`LOCAL_WHEN_EMPTY` and :data:`LOCAL_ON` over ``env`` (the template's values resolved);
    the ``shell``'s own values win over both."""
    switches = {key: env.get(key) or shell.get(key) or value for key, value in LOCAL_WHEN_EMPTY.items()}
    switches.update({key: shell.get(key) or value for key, value in LOCAL_ON.items()})
    return switches


def service_environment(
    base: Mapping[str, str], template_env: Mapping[str, str], api_key: str | None = None
) -> dict[str, str]:
    """Environment of the API and workers on this host: ``base`` (see :meth:`Emulator.child_env`), the
    template's function environment resolved, the local defaults (the shell may set its own) and the
    forced switches, and the API key(s) the API checks, if any."""
    env = {**base, **template_env}
    for key, value in LOCAL_DEFAULTS.items():
        env.setdefault(key, value)
    env.update(local_switches(env, base))
    env.update(LOCAL_FORCED)
    if api_key:
        env["TWOPASS_API_KEYS"] = api_key
    return env

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
from dataclasses import dataclass, fields
from typing import Any

from twopass.config import REPO_ROOT
from twopass.local.processes import Children, wait_http

STACK_NAME = "twopass-local"
#: What a laptop does differently from AWS, where neither the template nor the shell sets a value: the
#: CPU, callbacks to the tests' own receivers on loopback, a fixed callback secret that the banner prints.
LOCAL_DEFAULTS = {
    "TWOPASS_PROVIDERS": "cpu",
    "TWOPASS_CALLBACK_SECRET": "local-callback-secret",
    "TWOPASS_CALLBACK_ALLOW_PRIVATE": "true",
    "TWOPASS_CALLBACK_ALLOW_HTTP": "true",
}
#: Likewise, where neither the template nor the shell sets a value: a front-end dev server on this
#: machine (any port) may call the API.
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


#: Where a setting's value came from, as the ``make run`` banner names it.
FROM_SHELL = "shell"
FROM_TEMPLATE = "template.yaml"
FROM_LOCAL = "local stack"


def is_setting(name: str) -> bool:
    """Whether ``name`` is one of twopass's own variables (the ones the shell may set for the services)."""
    return name.startswith("TWOPASS_")


def is_secret(name: str) -> bool:
    """Whether a variable holds a secret (keys, secrets, tokens, passwords): never printed as it is."""
    return any(word in name for word in ("KEY", "SECRET", "TOKEN", "PASSWORD"))


def shown(name: str, value: str) -> str:
    """``value`` as a banner may print it: a secret masked, whatever its length."""
    return "****" if is_secret(name) else value


@dataclass(frozen=True)
class ServiceEnv:
    """The API's and workers' environment, and where each ``TWOPASS_*`` value in it came from."""

    values: dict[str, str]
    #: ``TWOPASS_*`` name → :data:`FROM_SHELL`, :data:`FROM_TEMPLATE` or :data:`FROM_LOCAL`.
    origins: dict[str, str]
    #: Settings the shell gave that the services do not get: the names of the stack's own resources,
    #: the API key (``--api-key``) and what the stack itself sets.
    unused_from_shell: tuple[str, ...] = ()
    #: Settings that name the stack's own resources (queue URLs, table, bucket, bus): never "not default".
    wiring: frozenset[str] = frozenset()

    def not_default(self) -> list[tuple[str, str, str]]:
        """(name, value as :func:`shown`, origin) of each setting whose value is not the code's default.

        The names of the stack's own resources are left out: they are what makes it a stack, and the
        banner shows the queue and the table on lines of their own.

        A value is compared as :class:`Settings` reads it (``1`` is ``true``, ``5.0`` is ``5``); one
        it cannot read is listed too, since the services will refuse it.
        """
        from twopass.config import Settings
        from twopass.exceptions import ConfigError

        defaults = Settings()
        listed = []
        for f in fields(Settings):
            name = f.metadata["env"]
            raw = self.values.get(name, "")
            if raw == "" or name in self.wiring:
                continue
            try:
                differs = getattr(Settings.from_env({name: raw}), f.name) != getattr(defaults, f.name)
            except ConfigError:
                differs = True
            if differs:
                listed.append((name, shown(name, raw), self.origins.get(name, FROM_SHELL)))
        return sorted(listed)


def _setting(
    name: str, shell: Mapping[str, str], template_env: Mapping[str, str], wiring: frozenset[str]
) -> tuple[str, str] | None:
    """(value, origin) of one ``TWOPASS_*`` variable by the precedence :func:`layered_environment` states."""
    local = LOCAL_DEFAULTS.get(name) or LOCAL_WHEN_EMPTY.get(name)
    ranked = (
        # The names of what the stack created: a queue URL left in the shell must not send jobs elsewhere.
        (template_env.get(name) if name in wiring else None, FROM_TEMPLATE),
        (shell.get(name), FROM_SHELL),
        (LOCAL_ON.get(name), FROM_LOCAL),
        (template_env.get(name), FROM_TEMPLATE),
        (local, FROM_LOCAL),
    )
    # Empty counts as unset, as it does for Settings.
    return next(((value, origin) for value, origin in ranked if value), None)


def layered_environment(
    base: Mapping[str, str],
    template_env: Mapping[str, str],
    api_key: str | None = None,
    *,
    wiring: frozenset[str] = frozenset(),
    overrides: Mapping[str, str] | None = None,
) -> ServiceEnv:
    """Environment of the API and workers on this host, and where each setting came from.

    ``base`` is this process's environment pointed at the emulator (:meth:`Emulator.child_env`): the
    shell. Each ``TWOPASS_*`` setting takes the first non-empty of

    1. ``overrides`` (the stack's own: a test's settings, the emulator's user pool);
    2. ``api_key``, for ``TWOPASS_API_KEYS`` (the key the local API checks, ``--api-key``);
    3. the template's value when it names a resource the stack created (``wiring``);
    4. the shell's value;
    5. :data:`LOCAL_ON` (the demo page);
    6. the template's value (``template.yaml``'s default for the function);
    7. :data:`LOCAL_DEFAULTS` and :data:`LOCAL_WHEN_EMPTY`.

    So a setting given in the shell wins over the template's default, as a template parameter
    does on AWS. Other variables: the shell's, the template's over them, :data:`LOCAL_FORCED` last.
    """
    env = {**base, **{k: v for k, v in template_env.items() if not is_setting(k)}}
    origins: dict[str, str] = {}
    names = {*base, *template_env, *LOCAL_DEFAULTS, *LOCAL_WHEN_EMPTY, *LOCAL_ON}
    for name in sorted(filter(is_setting, names)):
        chosen = _setting(name, base, template_env, wiring)
        if chosen is not None:
            env[name], origins[name] = chosen
    env.update(LOCAL_FORCED)
    if api_key:
        env["TWOPASS_API_KEYS"], origins["TWOPASS_API_KEYS"] = api_key, FROM_LOCAL
    for name, value in (overrides or {}).items():
        env[name] = value
        if is_setting(name):
            origins[name] = FROM_LOCAL
    unused = tuple(sorted(k for k, v in base.items() if is_setting(k) and v and origins.get(k) != FROM_SHELL))
    return ServiceEnv(env, origins, unused, wiring)

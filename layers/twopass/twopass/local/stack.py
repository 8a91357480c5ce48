"""The local stack: moto server on loopback, the template's data plane created in it, the API under
uvicorn and the worker(s) as child processes. ``make run`` and the end-to-end tests both use it.

Children run in process groups of their own, so a Ctrl-C in the terminal reaches only the process
that owns the stack, which then stops them in order: workers (they drain while the emulator still
answers), the API, the emulator last. :meth:`LocalStack.supervise` restarts a worker that died, with
backoff; the API or the emulator dying is the end of the stack (the emulator holds every job).

The pieces live beside this module: child processes in :mod:`twopass.local.processes`, restarts in
:mod:`twopass.local.supervisor`, the emulator and the services' environment in
:mod:`twopass.local.services`; their public names used with the stack are importable from here too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twopass.local import template as tpl
from twopass.local.cognito import UserPool, create_pool
from twopass.local.processes import Children, describe_exit, free_port, wait_http
from twopass.local.provision import Provisioned, provision
from twopass.local.services import (
    DEFAULT_API_KEY,
    EMULATOR_ENV,
    LOCAL_DEFAULTS,
    LOCAL_FORCED,
    STACK_NAME,
    WORKER_COMMAND,
    Emulator,
    ServiceEnv,
    layered_environment,
)
from twopass.local.supervisor import WORKER_STABLE_SECONDS, WorkerRestarts

__all__ = [
    "DEFAULT_API_KEY",
    "EMULATOR_ENV",
    "GRACEFUL_SHUTDOWN_SECONDS",
    "KEEP_ALIVE_SECONDS",
    "LOCAL_DEFAULTS",
    "LOCAL_FORCED",
    "STACK_NAME",
    "STOP_TIMEOUT",
    "WORKER_STABLE_SECONDS",
    "LocalStack",
    "api_command",
    "describe_exit",
    "free_port",
    "wait_http",
]

#: How long a whole stop may take: workers, API and emulator, SIGKILL for whatever is left. `make run`
#: promises 5 s from Ctrl-C to exit; the rest is the supervising process's own exit.
STOP_TIMEOUT = 4.0
#: Local HTTP limits the API's uvicorn enforces (see twopass.local.httpserver).
KEEP_ALIVE_SECONDS = 5
GRACEFUL_SHUTDOWN_SECONDS = 2


def api_command(host: str, port: int, *, max_header_bytes: int, processes: int = 1) -> list[str]:
    """uvicorn serving the API app, with the local HTTP protocol (header size and header/body
    timeouts, readable 4xx answers: uvicorn alone has neither) on httptools' parser, and uvloop's
    event loop (uvicorn's default where installed)."""
    args = [
        sys.executable, "-m", "uvicorn", "--factory", "twopass.api.app:create_app",
        "--host", host, "--port", str(port), "--no-access-log",
        "--http", "twopass.local.httpserver:LocalHttpToolsProtocol",
        "--h11-max-incomplete-event-size", str(max_header_bytes),
        "--timeout-keep-alive", str(KEEP_ALIVE_SECONDS),
        "--timeout-graceful-shutdown", str(GRACEFUL_SHUTDOWN_SECONDS),
    ]  # fmt: skip
    return [*args, "--workers", str(processes)] if processes > 1 else args


@dataclass
class LocalStack:
    """Start with :meth:`start` (or ``with LocalStack() as stack:``); :meth:`stop` ends everything."""

    api_port: int = 3000
    emulator_port: int = 4566
    workers: int = 1
    host: str = "127.0.0.1"
    template: Path = tpl.TEMPLATE
    parameters: dict[str, str] = field(default_factory=dict)
    #: Extra environment for the API and workers (e.g. short polls in tests); wins over everything.
    env: dict[str, str] = field(default_factory=dict)
    #: Where child output goes: ``None`` inherits the terminal, a directory gets one log per child.
    log_dir: Path | None = None
    api_processes: int = 1
    #: The key the API requires in ``x-api-key`` (``None``: no key, as with auth switched off).
    api_key: str | None = DEFAULT_API_KEY
    #: ``apikey``, or ``cognito``: a user pool with a demo user in the emulator, whose tokens the API requires.
    auth_mode: str = "apikey"

    #: The running children by name: ``emulator``, ``api``, ``worker-0`` …
    children: Children = field(init=False)
    provisioned: Provisioned | None = field(default=None, init=False)
    #: The emulator's user pool (``auth_mode="cognito"``), after :meth:`start`.
    user_pool: UserPool | None = field(default=None, init=False)
    _restarts: WorkerRestarts = field(default_factory=WorkerRestarts, init=False)

    def __post_init__(self) -> None:
        self.children = Children(self.log_dir)

    # -- where things are --------------------------------------------------------------------

    @property
    def emulator(self) -> Emulator:
        return Emulator(self.host, self.emulator_port)

    @property
    def endpoint_url(self) -> str:
        return self.emulator.url

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.children.procs

    @property
    def resources(self) -> dict[str, str]:
        """Physical id of each resource created, by logical id (empty before :meth:`start`)."""
        return self.provisioned.resources if self.provisioned else {}

    @property
    def outputs(self) -> dict[str, str]:
        return self.provisioned.outputs if self.provisioned else {}

    @property
    def service_env(self) -> dict[str, str]:
        """The template's environment of the API function, resolved against the created resources."""
        return self.provisioned.api_env if self.provisioned else {}

    @property
    def api_keys(self) -> list[str]:
        """The keys the API accepts (``api_key`` may list several, comma-separated)."""
        return [key.strip() for key in (self.api_key or "").split(",") if key.strip()]

    @property
    def callback_secret(self) -> str:
        """The secret that signs this stack's completion callbacks (what a receiver passes to ``verify``)."""
        return self.app_env().get("TWOPASS_CALLBACK_SECRET", "")

    def client(self, service: str) -> Any:
        """A boto3 client of the emulator (for tests and tools poking at the local resources)."""
        return self.emulator.client(service)

    def base_env(self) -> dict[str, str]:
        return self.emulator.child_env()

    def environment(self) -> ServiceEnv:
        """Environment of the API and workers, and where each setting came from: the template's
        function env resolved, under the shell's own settings, plus local bits (see
        :func:`~twopass.local.services.layered_environment`)."""
        wiring = self.provisioned.wiring if self.provisioned else frozenset()
        return layered_environment(self.base_env(), self.service_env, self.api_key, wiring=wiring, overrides=self.env)

    def app_env(self) -> dict[str, str]:
        """Environment of the API and workers (:meth:`environment`'s values)."""
        return self.environment().values

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalStack:
        try:
            self.emulator.start(self.children)
            self.provisioned = provision(
                self.client, stack_name=STACK_NAME, template_path=self.template, parameters=self.parameters
            )
            if self.auth_mode == "cognito":
                self.user_pool = create_pool(self.client, self.endpoint_url)
                self.env = {**self.user_pool.api_env(), **self.env}
            api = self._start_api()
            for i in range(self.workers):
                self.start_worker(f"worker-{i}")
            wait_http(f"{self.api_url}/health", 60, api)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop everything within ``timeout`` seconds: workers first, then the API, then the emulator.

        Each group gets SIGTERM and a share of the time (workers drain while the emulator still
        answers them); whatever is left at its deadline gets SIGKILL. Locally nothing outlives the
        emulator, so a worker cut short loses nothing that was going to survive anyway.
        """
        started = time.monotonic()
        for group, share in ((self.children.workers(), 0.6), (["api"], 0.9), (["emulator"], 1.0)):
            self.children.terminate(group, started + share * timeout)
        self.children.close()
        self._restarts.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _start_api(self) -> subprocess.Popen[bytes]:
        from twopass.local.httpserver import HttpLimits

        env = self.app_env()
        limits = HttpLimits.from_env(env)
        command = api_command(
            self.host, self.api_port, max_header_bytes=limits.max_header_bytes, processes=self.api_processes
        )
        return self.children.spawn("api", command, {**env, **limits.to_env()})

    # -- workers -----------------------------------------------------------------------------

    def worker_command(self) -> list[str]:
        return list(WORKER_COMMAND)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """Start (or restart) one worker process; chaos tests kill and restart them by name."""
        proc = self.children.spawn(name, self.worker_command(), self.app_env())
        self._restarts.started(name)
        return proc

    def stop_workers(self, names: Iterable[str], grace: float = 15.0) -> None:
        """SIGTERM the named workers (they drain), SIGKILL any still up after ``grace`` seconds."""
        self.children.terminate(names, time.monotonic() + grace)

    def alive(self) -> dict[str, bool]:
        return self.children.alive()

    def supervise(self) -> list[str]:
        """One round of supervision; call it every fraction of a second while the stack runs.

        A worker that exited is restarted after a backoff (1 s, 2 s, 4 s … 30 s; back to 1 s once a
        worker has stayed up for a minute), each step logged. Returns why the stack cannot go on:
        the API or the emulator exited (empty while all is well).
        """
        return self._restarts.supervise(self.children.procs, self.start_worker)

    def restarts(self) -> dict[str, int]:
        """How many times :meth:`supervise` restarted each worker."""
        return self._restarts.counts()

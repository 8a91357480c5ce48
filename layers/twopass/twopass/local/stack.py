"""The local stack: moto server on loopback, the template's data plane created in it, the API under
uvicorn and the worker(s) as child processes. ``make run`` and the end-to-end tests both use it.

Children run in process groups of their own, so a Ctrl-C in the terminal reaches only the process
that owns the stack, which then stops them in order: workers (they drain while the emulator still
answers), the API, the emulator last. :meth:`LocalStack.supervise` restarts a worker that died, with
backoff; the API or the emulator dying is the end of the stack (the emulator holds every job).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from twopass.backoff import Backoff
from twopass.config import REPO_ROOT
from twopass.local import template as tpl
from twopass.local.provision import Provisioned, provision

logger = logging.getLogger("twopass.local")

STACK_NAME = "twopass-local"
#: What a laptop does differently from AWS: no X-Ray daemon, no EMF collector, callbacks to the
#: tests' own receivers on loopback, a fixed callback secret that the banner prints.
LOCAL_DEFAULTS = {
    "TWOPASS_PROVIDERS": "cpu",
    "TWOPASS_CALLBACK_SECRET": "local-callback-secret",
    "TWOPASS_CALLBACK_ALLOW_PRIVATE": "true",
    "TWOPASS_CALLBACK_ALLOW_HTTP": "true",
}
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


#: A worker that stayed up this long before dying is restarted after the shortest delay again.
WORKER_STABLE_SECONDS = 60.0
#: How long a whole stop may take: workers, API and emulator, SIGKILL for whatever is left. `make run`
#: promises 5 s from Ctrl-C to exit; the rest is the supervising process's own exit.
STOP_TIMEOUT = 4.0
#: Local HTTP limits the API's uvicorn enforces (see twopass.local.httpserver).
KEEP_ALIVE_SECONDS = 5
GRACEFUL_SHUTDOWN_SECONDS = 2


def describe_exit(code: int) -> str:
    """``exit code 1`` / ``killed by SIGKILL``: how a child ended, for people."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class _Restarts:
    """Restart bookkeeping of one worker."""

    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=30.0))
    started: float = 0.0
    due: float | None = None
    count: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


@dataclass
class LocalStack:
    """Start with :meth:`start` (or ``with LocalStack() as stack:``); :meth:`stop` ends everything."""

    api_port: int = 3000
    emulator_port: int = 4566
    workers: int = 1
    host: str = "127.0.0.1"
    template: Path = tpl.TEMPLATE
    parameters: dict[str, str] = field(default_factory=dict)
    #: Extra environment for the API and workers (e.g. short polls in tests).
    env: dict[str, str] = field(default_factory=dict)
    #: Where child output goes: ``None`` inherits the terminal, a directory gets one log per child.
    log_dir: Path | None = None
    api_processes: int = 1
    #: The key the API requires in ``x-api-key`` (``None``: no key, as with auth switched off).
    api_key: str | None = DEFAULT_API_KEY

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    resources: dict[str, str] = field(default_factory=dict, init=False)
    outputs: dict[str, str] = field(default_factory=dict, init=False)
    service_env: dict[str, str] = field(default_factory=dict, init=False)
    provisioned: Provisioned | None = field(default=None, init=False)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict, init=False)
    _restarts: dict[str, _Restarts] = field(default_factory=dict, init=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.emulator_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def api_keys(self) -> list[str]:
        """The keys the API accepts (``api_key`` may list several, comma-separated)."""
        return [key.strip() for key in (self.api_key or "").split(",") if key.strip()]

    @property
    def callback_secret(self) -> str:
        """The secret that signs this stack's completion callbacks (what a receiver passes to ``verify``)."""
        return self.app_env().get("TWOPASS_CALLBACK_SECRET", "")

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(EMULATOR_ENV)
        env["AWS_ENDPOINT_URL"] = self.endpoint_url
        env["PYTHONUNBUFFERED"] = "1"
        # Children import twopass from this checkout even when it is not installed.
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT / "layers" / "twopass"), env.get("PYTHONPATH")])
        )
        return env

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalStack:
        try:
            self._start_emulator()
            self._create_stack()
            self._start_api()
            for i in range(self.workers):
                self.start_worker(f"worker-{i}")
            wait_http(f"{self.api_url}/health", 60, self.procs["api"])
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
        workers = [n for n in self.procs if n.startswith("worker")]
        for group, share in ((workers, 0.6), (["api"], 0.9), (["emulator"], 1.0)):
            self._terminate([n for n in group if n in self.procs], started + share * timeout)
        self.procs.clear()
        self._restarts.clear()
        for fh in self._logs.values():
            fh.close()
        self._logs.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _terminate(self, names: list[str], deadline: float) -> None:
        live = [self.procs[n] for n in names if self.procs[n].poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        for proc in live:
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _spawn(
        self, name: str, args: list[str], env: Mapping[str, str], *, quiet: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start a child; its output goes to ``log_dir/<name>.log``, else the terminal (or nowhere if quiet)."""
        out: IO[bytes] | int | None = subprocess.DEVNULL if quiet else None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            previous = self._logs.pop(name, None)  # a restarted worker appends to the same log
            if previous is not None:
                previous.close()
            log = (self.log_dir / f"{name}.log").open("ab")
            self._logs[name] = log
            out = log
        proc = subprocess.Popen(
            args,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            cwd=REPO_ROOT,
            # A process group of its own: the terminal's Ctrl-C goes to the stack's owner only, which
            # stops the children in order instead of all of them dying at once (and the workers
            # logging connection errors against an emulator that is already gone).
            process_group=0,
        )
        self.procs[name] = proc
        return proc

    def _start_emulator(self) -> None:
        proc = self._spawn(
            "emulator",
            [sys.executable, "-m", "twopass.local.emulator", "-H", self.host, "-p", str(self.emulator_port)],
            self.base_env(),
            # One access-log line per long poll would drown the API's and the worker's logs.
            quiet=True,
        )
        wait_http(f"{self.endpoint_url}/moto-api/", 60, proc)

    def client(self, service: str) -> Any:
        """A boto3 client of the emulator (for tests and tools poking at the local resources)."""
        import boto3

        env = EMULATOR_ENV
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=env["AWS_SESSION_TOKEN"],
        )

    def _create_stack(self) -> None:
        """Transform template.yaml and create its data plane in the emulator with CloudFormation."""
        self.provisioned = provision(
            self.client, stack_name=STACK_NAME, template_path=self.template, parameters=self.parameters
        )
        self.resources = self.provisioned.resources
        self.outputs = self.provisioned.outputs
        self.service_env = dict(self.provisioned.api_env)

    def app_env(self) -> dict[str, str]:
        """Environment of the API and workers: the template's function env, resolved, plus local bits."""
        env = self.base_env()
        env.update(self.service_env)
        for key, value in LOCAL_DEFAULTS.items():
            env.setdefault(key, value)
        env.update(LOCAL_FORCED)
        if self.api_key:
            env["TWOPASS_API_KEYS"] = self.api_key
        env.update(self.env)
        return env

    def _start_api(self) -> None:
        from twopass.local.httpserver import HttpLimits

        limits = HttpLimits.from_env(self.app_env())
        args = [
            sys.executable, "-m", "uvicorn", "--factory", "twopass.api.app:create_app",
            "--host", self.host, "--port", str(self.api_port), "--no-access-log",
            # Header size and header/body timeouts, readable 4xx answers (uvicorn alone has neither).
            "--http", "twopass.local.httpserver:LocalH11Protocol",
            "--h11-max-incomplete-event-size", str(limits.max_header_bytes),
            "--timeout-keep-alive", str(KEEP_ALIVE_SECONDS),
            "--timeout-graceful-shutdown", str(GRACEFUL_SHUTDOWN_SECONDS),
        ]  # fmt: skip
        if self.api_processes > 1:
            args += ["--workers", str(self.api_processes)]
        self._spawn("api", args, {**self.app_env(), **limits.to_env()})

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "twopass.worker"]

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """Start (or restart) one worker process; chaos tests kill and restart them by name."""
        proc = self._spawn(name, self.worker_command(), self.app_env())
        self._restarts.setdefault(name, _Restarts()).started = time.monotonic()
        return proc

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def supervise(self) -> list[str]:
        """One round of supervision; call it every fraction of a second while the stack runs.

        A worker that exited is restarted after a backoff (1 s, 2 s, 4 s … 30 s; back to 1 s once a
        worker has stayed up for a minute), each step logged. Returns why the stack cannot go on:
        the API or the emulator exited (empty while all is well).
        """
        now = time.monotonic()
        fatal: list[str] = []
        for name, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            if not name.startswith("worker"):
                fatal.append(f"the {'API' if name == 'api' else name} exited ({describe_exit(code)})")
                continue
            state = self._restarts.setdefault(name, _Restarts())
            if state.due is None:
                if now - state.started >= WORKER_STABLE_SECONDS:
                    state.backoff.reset()
                delay = state.backoff.next_delay()
                state.due = now + delay
                logger.warning("%s exited (%s); restarting it in %.0f s", name, describe_exit(code), delay)
            elif now >= state.due:
                state.due = None
                state.count += 1
                restarted = self.start_worker(name)
                logger.warning("%s restarted (pid %d, restart %d)", name, restarted.pid, state.count)
        return fatal

    def restarts(self) -> dict[str, int]:
        """How many times :meth:`supervise` restarted each worker."""
        return {name: state.count for name, state in self._restarts.items()}

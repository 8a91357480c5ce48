"""The local stack: moto server on loopback, the template's data plane created in it, the API under
uvicorn and the worker(s) as child processes. ``make run`` and the end-to-end tests both use it.
"""

from __future__ import annotations

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

from twopass.config import REPO_ROOT
from twopass.local import template as tpl
from twopass.local.provision import Provisioned, provision

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
    "ORT_DISABLE_TELEMETRY": "1",
}


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
    _logs: list[IO[bytes]] = field(default_factory=list, init=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.emulator_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

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

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM everything (workers first, so they drain), then SIGKILL what is left."""
        workers = [n for n in self.procs if n.startswith("worker")]
        # All workers drain at once (each may be inside a long poll), then the API, then the emulator
        # the others still needed while draining.
        for group in (workers, ["api"], ["emulator"]):
            self._terminate([n for n in group if n in self.procs], timeout)
        self.procs.clear()
        for fh in self._logs:
            fh.close()
        self._logs.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _terminate(self, names: list[str], timeout: float) -> None:
        live = [self.procs[n] for n in names if self.procs[n].poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
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
            log = (self.log_dir / f"{name}.log").open("ab")
            self._logs.append(log)
            out = log
        proc = subprocess.Popen(
            args, env=dict(env), stdout=out, stderr=subprocess.STDOUT if out is not None else None, cwd=REPO_ROOT
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
        args = [
            sys.executable, "-m", "uvicorn", "--factory", "twopass.api.app:create_app",
            "--host", self.host, "--port", str(self.api_port), "--no-access-log",
            "--timeout-graceful-shutdown", "10",
        ]  # fmt: skip
        if self.api_processes > 1:
            args += ["--workers", str(self.api_processes)]
        self._spawn("api", args, self.app_env())

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """Start (or restart) one worker process; chaos tests kill and restart them by name."""
        return self._spawn(name, [sys.executable, "-m", "twopass.worker"], self.app_env())

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

"""``python -m twopass.local.samlocal``: the API under ``sam local start-api``, against the local emulator.

``make sam-local`` runs this. It starts the project's emulator (the one ``make run`` uses), creates
the template's queues, table and bucket in it from ``template.yaml``, writes the ``--env-vars`` file
that points the function at them, runs ``sam build`` when the sources are newer than the build, then
``sam local start-api`` and a worker, so jobs complete. Ctrl-C stops everything.

``sam local`` resolves a template ``!Ref`` to the resource's logical id and overrides only the
variables a function declares, so the env-vars file carries the real names, and the template
declares every variable the function reads (``tests/infra/test_sam_local.py`` holds both to that).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twopass.config import REPO_ROOT
from twopass.exceptions import TwopassError
from twopass.local import template as tpl
from twopass.local.foreground import Foreground
from twopass.local.processes import Children
from twopass.local.provision import API_FUNCTION, Provisioned, provision
from twopass.local.services import (
    DEFAULT_API_KEY,
    EMULATOR_ENV,
    LOCAL_DEFAULTS,
    LOCAL_FORCED,
    STACK_NAME,
    WORKER_COMMAND,
    Emulator,
    local_switches,
    service_environment,
)

BUILD_DIR = REPO_ROOT / ".aws-sam" / "build"
ENV_FILE = REPO_ROOT / ".aws-sam" / "env.local.json"
DEFAULT_SAM = REPO_ROOT / ".venv-sam" / "bin" / "sam"
#: What `sam build` packages: a change in any of these makes the build stale.
BUILD_SOURCES = (
    REPO_ROOT / "template.yaml",
    REPO_ROOT / "functions" / "api",
    REPO_ROOT / "layers" / "twopass",
    REPO_ROOT / "layers" / "deps",
    REPO_ROOT / "layers" / "models" / "fast",
)
#: Docker Desktop's name for the host, as seen from a container.
DOCKER_HOST_ALIAS = "host.docker.internal"
NO_DOCKER_HINT = (
    "sam local start-api runs the function in a Docker container: install Docker (Docker Desktop, or "
    "Docker Engine on Linux) and start it. `make run` serves the same API without Docker."
)


class SamLocalError(TwopassError):
    """``sam local start-api`` cannot be run: Docker or the SAM CLI is missing, or a step failed."""


# ---------------------------------------------------------------- the env-vars file


def declared_variables(cfn: Mapping[str, Any], function: str = API_FUNCTION) -> set[str]:
    """Variables the (transformed) template declares on ``function``: the only ones ``sam local`` passes."""
    return set(tpl.function_environment(cfn, function))


def function_env(
    provisioned: Provisioned,
    *,
    endpoint_url: str,
    api_key: str | None,
    inherited: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The API function's environment under ``sam local``: what ``make run`` gives its API.

    The template's variables resolved against the emulator's resources (real queue URL, table and
    bucket names instead of logical ids), the local stack's defaults, ``AWS_ENDPOINT_URL`` as the
    container sees the emulator, and the API key the function checks itself. ``inherited`` (the
    caller's ``TWOPASS_*`` variables) fills in settings the template leaves to the code's default,
    as it does for ``make run``. Only declared variables are returned; the model paths keep the
    template's ``/opt`` values, where the layers are unpacked in the container.
    """
    declared = declared_variables(provisioned.template)
    values: dict[str, str] = {k: v for k, v in (inherited or {}).items() if k.startswith("TWOPASS_")}
    values.update(LOCAL_DEFAULTS)
    values.update(provisioned.api_env)
    values.update(LOCAL_FORCED)
    values.update(local_switches(values, inherited or {}))
    values["AWS_ENDPOINT_URL"] = endpoint_url
    values["TWOPASS_API_KEYS"] = api_key or ""
    for required in ("AWS_ENDPOINT_URL", "TWOPASS_API_KEYS", "TWOPASS_QUEUE_URL", "TWOPASS_TABLE_NAME"):
        if required not in declared:
            raise SamLocalError(f"template.yaml does not declare {required} on {API_FUNCTION}: sam local would drop it")
    return {k: values[k] for k in sorted(values) if k in declared}


def write_env_file(env: Mapping[str, str], path: Path = ENV_FILE) -> Path:
    """Write ``sam local``'s ``--env-vars`` file: ``{"ApiFunction": {name: value}}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({API_FUNCTION: dict(env)}, indent=2) + "\n")
    return path


# ---------------------------------------------------------------- prerequisites


def docker_problem() -> str | None:
    """Why Docker cannot run the function's container, or ``None`` when its daemon answers."""
    docker = shutil.which("docker")
    if docker is None:
        return f"Docker is not installed (no `docker` on PATH). {NO_DOCKER_HINT}"
    try:
        # `docker version` fails, saying why, when the client cannot reach a daemon.
        done = subprocess.run([docker, "version"], capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return f"the Docker daemon did not answer within 30 s. {NO_DOCKER_HINT}"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        return f"the Docker daemon is not reachable ({reason}). {NO_DOCKER_HINT}"
    return None


def sam_problem(sam: str) -> str | None:
    """Why ``sam`` cannot be run, or ``None``."""
    if shutil.which(sam) is None:
        return (
            f"the SAM CLI was not found at {sam!r}: `make sam-local` installs it in .venv-sam "
            "(pip install aws-sam-cli); or pass --sam /path/to/sam"
        )
    return None


def needs_build(build_dir: Path = BUILD_DIR, sources: Sequence[Path] = BUILD_SOURCES) -> bool:
    """True when ``sam build`` has not run, or a source file changed since it last did."""
    built = build_dir / "template.yaml"
    if not built.is_file():
        return True
    stamp = built.stat().st_mtime
    for source in sources:
        paths = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
        for path in paths:
            if "__pycache__" not in path.parts and path.stat().st_mtime > stamp:
                return True
    return False


# ---------------------------------------------------------------- where the emulator listens


def docker_bridge_gateway() -> str | None:
    """The host's address on Docker's default bridge network, if this host has one (Docker Engine on Linux)."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        done = subprocess.run(
            [docker, "network", "inspect", "bridge", "--format", "{{range .IPAM.Config}}{{.Gateway}} {{end}}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    for candidate in done.stdout.split() if done.returncode == 0 else []:
        try:
            if ipaddress.ip_address(candidate).version == 4 and _is_local_address(candidate):
                return candidate
        except ValueError:
            continue
    return None


def _is_local_address(address: str) -> bool:
    # Docker Desktop reports its VM's bridge, which this host cannot bind to.
    with socket.socket() as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def default_addresses(emulator_port: int, platform: str = sys.platform) -> tuple[str, str]:
    """(address the emulator listens on, ``AWS_ENDPOINT_URL`` the function's container uses).

    The function runs in a container on Docker's default bridge network. Docker Engine on Linux
    gives the host an address on that bridge, and the emulator listens there (loopback is not
    reachable from the container, and 0.0.0.0 would open it to the network). Docker Desktop routes
    ``host.docker.internal`` to the host's loopback.
    """
    if platform.startswith("linux"):
        gateway = docker_bridge_gateway()
        if gateway is not None:
            return gateway, f"http://{gateway}:{emulator_port}"
    return "127.0.0.1", f"http://{DOCKER_HOST_ALIAS}:{emulator_port}"


# ---------------------------------------------------------------- commands


def build_command(sam: str) -> list[str]:
    return [sam, "build", "--template", "template.yaml", "--build-dir", str(BUILD_DIR.relative_to(REPO_ROOT))]


def start_api_command(
    sam: str, *, env_file: Path, host: str, port: int, region: str, extra: Sequence[str] = ()
) -> list[str]:
    """``sam local start-api`` on the built template (its default from the repository root)."""
    return [
        sam, "local", "start-api", "--env-vars", str(env_file), "--host", host, "--port", str(port),
        "--region", region, *extra,
    ]  # fmt: skip


def sam_environment(path_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """SAM's own environment: the emulator's fake credentials (SAM hands its credentials to the
    container), no profile, and no telemetry."""
    env = dict(os.environ if path_env is None else path_env)
    env.pop("AWS_PROFILE", None)
    env.update(EMULATOR_ENV)
    env.setdefault("SAM_CLI_TELEMETRY", "0")
    return env


# ---------------------------------------------------------------- the running set


@dataclass
class SamLocal:
    """Emulator, resources, env-vars file, ``sam local start-api`` and workers; :meth:`stop` ends them."""

    sam: str = str(DEFAULT_SAM)
    api_port: int = 3000
    api_host: str = "127.0.0.1"
    emulator_port: int = 4566
    emulator_host: str = "127.0.0.1"
    #: ``AWS_ENDPOINT_URL`` inside the function's container.
    function_endpoint: str = f"http://{DOCKER_HOST_ALIAS}:4566"
    workers: int = 1
    api_key: str | None = DEFAULT_API_KEY
    env_file: Path = ENV_FILE
    build: bool | None = None
    sam_args: Sequence[str] = ()
    log_dir: Path | None = None

    #: The running children by name: ``emulator``, ``sam``, ``worker-0`` …
    children: Children = field(init=False)
    provisioned: Provisioned | None = field(default=None, init=False)
    function_vars: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.children = Children(self.log_dir)

    @property
    def emulator(self) -> Emulator:
        """The emulator, as this host sees it."""
        return Emulator(self.emulator_host, self.emulator_port)

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    def worker_env(self) -> dict[str, str]:
        """The worker's environment, as ``make run`` gives it (the emulator seen from this host)."""
        return service_environment(self.emulator.child_env(), self.provisioned.api_env if self.provisioned else {})

    def start(self) -> SamLocal:
        try:
            self.start_emulator()
            self.create_resources()
            self.sam_build()
            self.start_api()
            for i in range(self.workers):
                self.children.spawn(f"worker-{i}", list(WORKER_COMMAND), self.worker_env())
            self.wait_api()
        except BaseException:
            self.stop()
            raise
        return self

    def start_emulator(self) -> None:
        self.emulator.start(self.children)

    def client(self, service: str) -> Any:
        return self.emulator.client(service)

    def create_resources(self) -> Path:
        """Create the template's data plane in the emulator and write the env-vars file for it."""
        self.provisioned = provision(self.client, stack_name=STACK_NAME)
        self.function_vars = function_env(
            self.provisioned, endpoint_url=self.function_endpoint, api_key=self.api_key, inherited=os.environ
        )
        return write_env_file(self.function_vars, self.env_file)

    def sam_build(self) -> None:
        if self.build is False or (self.build is None and not needs_build()):
            return
        print("sam build (the function and its layers) …", file=sys.stderr, flush=True)
        done = subprocess.run(build_command(self.sam), cwd=REPO_ROOT, env=sam_environment(), check=False)
        if done.returncode != 0:
            raise SamLocalError(f"sam build failed (exit code {done.returncode})")

    def start_api(self) -> None:
        args = start_api_command(
            self.sam,
            env_file=self.env_file,
            host=self.api_host,
            port=self.api_port,
            region=EMULATOR_ENV["AWS_REGION"],
            extra=self.sam_args,
        )
        self.children.spawn("sam", args, sam_environment())

    def wait_api(self, timeout: float = 300) -> float:
        """Wait for SAM's port, then for the first answer (a cold start); returns its seconds."""
        deadline = time.monotonic() + timeout
        self._wait_port(deadline, timeout)
        # One request at a time: each retry of a slow first call would start another container.
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=max(1.0, deadline - started)) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise SamLocalError(f"the function did not answer GET /health: {exc}") from exc
        return time.monotonic() - started

    def _wait_port(self, deadline: float, timeout: float) -> None:
        sam = self.children.procs["sam"]
        while True:
            if sam.poll() is not None:
                raise SamLocalError(f"sam local start-api exited with code {sam.returncode}")
            with socket.socket() as s:
                if s.connect_ex((self.api_host, self.api_port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise SamLocalError(f"sam local start-api did not open {self.api_url} within {timeout:.0f} s")
            time.sleep(0.25)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM SAM first (it removes its containers), then the workers, then the emulator; each
        group gets ``timeout`` seconds before SIGKILL."""
        for group in (["sam"], self.children.workers(), ["emulator"]):
            self.children.terminate(group, time.monotonic() + timeout)
        self.children.close()

    def alive(self) -> dict[str, bool]:
        return self.children.alive()


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m twopass.local.samlocal",
        description="Serve the API with `sam local start-api` (Docker) against the local emulator: start the "
        "emulator, create the queues, table and bucket from template.yaml, write the --env-vars file, "
        "`sam build` if the sources changed, then start the API and the worker(s). Ctrl-C stops everything. "
        "Arguments after `--` go to `sam local start-api`.",
    )
    parser.add_argument("--port", type=int, default=3000, help="API port on 127.0.0.1 (default 3000)")
    parser.add_argument("--emulator-port", type=int, default=4566, help="emulator port (default 4566)")
    parser.add_argument(
        "--emulator-host",
        help="address the emulator listens on (default: Docker's bridge address on Linux, else 127.0.0.1)",
    )
    parser.add_argument(
        "--function-endpoint",
        help="AWS_ENDPOINT_URL inside the function's container (default: the bridge address on Linux, "
        f"else http://{DOCKER_HOST_ALIAS}:PORT)",
    )
    parser.add_argument("--sam", default=str(DEFAULT_SAM), help="the SAM CLI to run (default .venv-sam/bin/sam)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1; 0 for none)")
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help=f"key the function requires in x-api-key (default {DEFAULT_API_KEY!r}; '' turns auth off)",
    )
    parser.add_argument("--env-file", type=Path, default=ENV_FILE, help="where to write the --env-vars file")
    build = parser.add_mutually_exclusive_group()
    build.add_argument("--build", action="store_true", default=None, help="always run `sam build` first")
    build.add_argument("--no-build", dest="build", action="store_false", help="never run `sam build`")
    parser.add_argument("--log-dir", type=Path, help="write each process's log here instead of the terminal")
    parser.add_argument("--check-docker", action="store_true", help="only check that Docker answers, then exit")
    return parser


def _split_sam_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(our arguments, those after ``--``, which go to ``sam local start-api``)."""
    args = list(argv)
    if "--" not in args:
        return args, []
    cut = args.index("--")
    return args[:cut], args[cut + 1 :]


def _runner(args: argparse.Namespace, sam_args: Sequence[str]) -> SamLocal:
    host, endpoint = default_addresses(args.emulator_port)
    return SamLocal(
        sam=args.sam,
        api_port=args.port,
        emulator_port=args.emulator_port,
        emulator_host=args.emulator_host or host,
        function_endpoint=args.function_endpoint or endpoint,
        workers=args.workers,
        api_key=args.api_key or None,
        env_file=args.env_file,
        build=args.build,
        sam_args=sam_args,
        log_dir=args.log_dir,
    )


def _exited(runner: SamLocal) -> str | None:
    """Which children exited, if any: the end of the set."""
    dead = [name for name, alive in runner.alive().items() if not alive]
    return f"process(es) exited: {', '.join(dead)}; stopping" if dead else None


def main(argv: Sequence[str] | None = None) -> int:
    own, sam_args = _split_sam_args(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(own)
    problem = docker_problem()
    if problem is None and not args.check_docker:
        problem = sam_problem(args.sam)
    if problem is not None:
        print(f"make sam-local: {problem}", file=sys.stderr)
        return 2
    if args.check_docker:
        return 0

    runner = _runner(args, sam_args)
    # A build can take minutes: a signal meanwhile unwinds start(), which stops what it started.
    foreground = Foreground(interrupted="interrupted; stopped", failed="make sam-local")
    print(f"starting the emulator on {runner.emulator.url} and sam local start-api …", file=sys.stderr, flush=True)
    failed = foreground.start(runner.start)
    if failed is not None:
        return failed
    _banner(runner)
    try:
        return foreground.watch(lambda: _exited(runner), 0.5)
    finally:
        print("stopping …", file=sys.stderr)
        runner.stop()


def _banner(runner: SamLocal) -> None:
    url = runner.api_url
    key = f" -H 'x-api-key: {runner.api_key}'" if runner.api_key else ""
    vars_ = runner.function_vars
    print(
        f"""
twopass is running under sam local start-api on {url}
  env vars {runner.env_file}  (AWS_ENDPOINT_URL={vars_.get("AWS_ENDPOINT_URL")})
  queue    {vars_.get("TWOPASS_QUEUE_URL")}
  table    {vars_.get("TWOPASS_TABLE_NAME")}
  api key  {runner.api_key or "(none: auth off)"}  (checked by the function; /health and /docs are open)
  workers  {runner.workers}, on this host (emulator {runner.emulator.url})

Try:
  curl {url}/health
  curl{key} {url}/predict/test
  curl{key} -X POST -H 'Content-Type: image/jpeg' --data-binary @tests/data/coffee.jpg {url}/predict
  curl{key} {url}/job/<job_id>
  open {url}/docs

Each function container starts cold (a few seconds). Ctrl-C stops everything.
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

"""``python -m twopass.local.samlocal``: the API under ``sam local start-api``, against the local emulator.

``make sam-local`` runs this. It starts the project's emulator (the one ``make run`` uses), creates
the template's queues, table and bucket in it from ``template.yaml``, writes the ``--env-vars`` file
that points the function at them, runs ``sam build`` when the sources are newer than the build, then
``sam local start-api`` and a worker, so jobs complete. Ctrl-C stops everything.

``sam local`` resolves a template ``!Ref`` to the resource's logical id and overrides only the
variables a function declares, so the env-vars file carries the real names, and the template
declares every variable the function reads (``tests/infra/test_sam_local.py`` holds both to that).

Your own model packs (``make sam-local FAST_MODEL=DIR SLOW_MODEL=DIR``): the worker runs on this
host and reads the slow pack where it is. The function's container sees no host path (SAM gives it
only the function's build folder and the layers), so the fast pack is copied into the emulator's S3
(:data:`PACK_BUCKET`) and the function reads it from there, as a deployed function reads the
``FastModel`` prefix: the same fetch, cache and sha256 check.
"""

from __future__ import annotations

import argparse
import contextlib
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
    STACK_NAME,
    WORKER_COMMAND,
    Emulator,
    is_setting,
    layered_environment,
)

BUILD_DIR = REPO_ROOT / ".aws-sam" / "build"
ENV_FILE = REPO_ROOT / ".aws-sam" / "env.local.json"
DEFAULT_SAM = REPO_ROOT / ".venv-sam" / "bin" / "sam"
#: What `sam build` packages: a change in any of these makes the build stale.
BUILD_SOURCES = (
    REPO_ROOT / "template.yaml",
    REPO_ROOT / "functions" / "api",
    REPO_ROOT / "layers" / "twopass",
    REPO_ROOT / "infra" / "closure.py",  # selects what of layers/twopass the layer carries
    REPO_ROOT / "layers" / "deps",
    REPO_ROOT / "layers" / "models" / "fast",
)
#: Docker Desktop's name for the host, as seen from a container.
DOCKER_HOST_ALIAS = "host.docker.internal"
#: The emulator's bucket a fast pack from this host is copied into, and its prefix there: the
#: function's container reads ``s3://twopass-local-models/fast/`` through the emulator.
PACK_BUCKET = "twopass-local-models"
FAST_PACK_PREFIX = "fast/"
#: Model locations on this host mean nothing inside the function's container: never passed through.
MODEL_VARIABLES = frozenset({"TWOPASS_FAST_MODEL", "TWOPASS_SLOW_MODEL"})
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
    fast_model: str | None = None,
) -> dict[str, str]:
    """The API function's environment under ``sam local``: what ``make run`` gives its API.

    The template's variables resolved against the emulator's resources (real queue URL, table and
    bucket names instead of logical ids), ``AWS_ENDPOINT_URL`` as the container sees the emulator,
    and the API key the function checks itself. ``inherited`` (the caller's ``TWOPASS_*``
    variables) is layered as for ``make run``: a setting in the shell wins over the template's
    default, never over the names of the stack's resources, and the local defaults fill in the
    rest. Only declared variables are returned. The fast model is ``fast_model`` (a location the
    container can read, see :func:`publish_pack`), else the template's ``/opt`` path, where the
    layer is unpacked in the container: a model path of this host is never passed on.
    """
    declared = declared_variables(provisioned.template)
    shell = {k: v for k, v in (inherited or {}).items() if is_setting(k) and k not in MODEL_VARIABLES}
    values = layered_environment(shell, provisioned.api_env, wiring=provisioned.wiring).values
    if fast_model:
        values["TWOPASS_FAST_MODEL"] = fast_model
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


# ---------------------------------------------------------------- your fast pack, for the container


def publish_pack(s3: Any, location: str, *, bucket: str = PACK_BUCKET, prefix: str = FAST_PACK_PREFIX) -> str:
    """Copy the pack at ``location`` on this host into the emulator's S3; the ``s3://`` prefix to serve it from.

    The copy is a pack as ``FastModel`` names one on AWS: ``card.json`` and the files it names (the
    model, a labels file). A card without the model's ``sha256`` gets it in the copy, since a pack
    read from S3 is cached and verified by it. The pack is validated first: a broken one is its
    :class:`~twopass.models.pack.ModelPackError` line, before anything is uploaded.
    """
    from twopass.models.card import sha256_file
    from twopass.models.pack import PACK_CARD, load_pack

    pack = load_pack(Path(location.removeprefix("file://")).expanduser())
    card = json.loads(pack.card_file.read_text(encoding="utf-8"))
    card["sha256"] = card.get("sha256") or sha256_file(pack.model_file)
    folder = pack.card_file.parent
    names = [card["file"]]
    if isinstance(card["labels"], str) and (folder / card["labels"]).is_file():
        names.append(card["labels"])
    # Already there: a second start against the same emulator.
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)
    for name in names:
        s3.upload_file(str(folder / name), bucket, prefix + name)
    # The card last, as S3Source writes its own copy: a card always names files that are there.
    s3.put_object(Bucket=bucket, Key=prefix + PACK_CARD, Body=json.dumps(card, indent=2).encode())
    return f"s3://{bucket}/{prefix}"


def container_model(s3: Any, location: str | None) -> str | None:
    """Where the function's container reads the fast pack ``location`` of this host (``None``: the bundled one).

    A pack on this host is copied into the emulator (:func:`publish_pack`); an ``s3://`` location is
    passed on as it is, and read from the emulator too (the container's ``AWS_ENDPOINT_URL``).
    """
    if not location:
        return None
    if "://" in location and not location.startswith("file://"):
        return location
    return publish_pack(s3, location)


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
    sam: str,
    *,
    env_file: Path,
    host: str,
    port: int,
    region: str,
    parameters: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """``sam local start-api`` on the built template (its default from the repository root), with
    ``parameters`` as template parameter overrides (``extra`` may pass its own, which replace them)."""
    overrides = [f"{name}={value}" for name, value in (parameters or {}).items()]
    return [
        sam, "local", "start-api", "--env-vars", str(env_file), "--host", host, "--port", str(port),
        "--region", region, *(["--parameter-overrides", *overrides] if overrides else []), *extra,
    ]  # fmt: skip


def template_parameters(function_vars: Mapping[str, str]) -> dict[str, str]:
    """Template parameters for ``sam local start-api``: ``CorsAllowOrigins`` as the function's
    ``TWOPASS_CORS_ALLOW_ORIGINS``, as one parameter sets both on AWS.

    SAM CLI answers every ``OPTIONS`` of a route itself from the Api's ``Cors`` (the function never
    sees a preflight) and puts those headers on the function's answers too. Left at its empty default
    the parameter makes that answer ``Access-Control-Allow-Origin: null``, and no page could call the
    local API; set, SAM answers preflights as API Gateway does (docs/sam-local.md).
    """
    origins = [o.strip() for o in function_vars.get("TWOPASS_CORS_ALLOW_ORIGINS", "").split(",") if o.strip()]
    # No spaces: SAM splits its overrides on them.
    return {"CorsAllowOrigins": ",".join(origins)} if origins else {}


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
    #: Your model packs on this host (``None``: the bundled models): the fast one goes to the function
    #: through the emulator's S3, the slow one to the worker(s), both as given to the worker.
    fast_model: str | None = None
    slow_model: str | None = None

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
        """The worker's environment, as ``make run`` gives it (the emulator seen from this host), with
        the packs where this host has them (the worker checks that both name the same classes)."""
        provisioned = self.provisioned
        env = layered_environment(
            self.emulator.child_env(),
            provisioned.api_env if provisioned else {},
            wiring=provisioned.wiring if provisioned else frozenset(),
        ).values
        models = {"TWOPASS_FAST_MODEL": self.fast_model, "TWOPASS_SLOW_MODEL": self.slow_model}
        env.update({name: location for name, location in models.items() if location})
        return env

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
            self.provisioned,
            endpoint_url=self.function_endpoint,
            api_key=self.api_key,
            inherited=os.environ,
            fast_model=container_model(self.client("s3"), self.fast_model),
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
            parameters=template_parameters(self.function_vars),
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
    parser.add_argument(
        "--fast-model",
        default=os.environ.get("TWOPASS_FAST_MODEL") or None,
        help="your fast model pack (a directory, or an .onnx with its card; default $TWOPASS_FAST_MODEL, else "
        "the bundled model): copied into the emulator's S3, where the function reads it",
    )
    parser.add_argument(
        "--slow-model",
        default=os.environ.get("TWOPASS_SLOW_MODEL") or None,
        help="your slow model pack (default $TWOPASS_SLOW_MODEL, else the bundled model): read by the worker(s)",
    )
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
    # Docker is asked for its bridge only when an address is left to the default.
    given = args.emulator_host and args.function_endpoint
    host, endpoint = (args.emulator_host, args.function_endpoint) if given else default_addresses(args.emulator_port)
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
        fast_model=args.fast_model,
        slow_model=args.slow_model,
    )


def check_models(fast_model: str | None, slow_model: str | None) -> str | None:
    """Why the packs cannot serve (the line the API and the worker would refuse to start with), or ``None``.

    Checked on this host before anything starts, as ``make run`` does: both packs load and name the
    same classes (the function's container, which sees only the fast one, could not tell).
    """
    from twopass.config import Settings
    from twopass.exceptions import ModelLoadError
    from twopass.models.pack import preflight

    defaults = Settings()
    try:
        preflight(fast_model or defaults.fast_model, slow_model or defaults.slow_model)
    except ModelLoadError as exc:
        return str(exc)
    return None


def _exited(runner: SamLocal) -> str | None:
    """Which children exited, if any: the end of the set."""
    dead = [name for name, alive in runner.alive().items() if not alive]
    return f"process(es) exited: {', '.join(dead)}; stopping" if dead else None


def main(argv: Sequence[str] | None = None) -> int:
    own, sam_args = _split_sam_args(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(own)
    problem = None if args.check_docker else check_models(args.fast_model, args.slow_model)
    if problem is None:
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
{_packs(runner)}
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


def _packs(runner: SamLocal) -> str:
    """The banner's lines for your packs, where the function and the worker read each (none: bundled)."""
    lines = []
    if runner.fast_model:
        where = runner.function_vars.get("TWOPASS_FAST_MODEL")
        lines.append(f"  fast     {runner.fast_model}  (the function reads {where})")
    if runner.slow_model:
        lines.append(f"  slow     {runner.slow_model}  (read by the worker)")
    return "".join(line + "\n" for line in lines)


if __name__ == "__main__":
    sys.exit(main())

"""`sam local start-api` out of the box (make sam-local), checked offline: no Docker, no SAM CLI.

``sam local`` resolves a template ``!Ref`` to the resource's logical id, overrides only variables a
function declares, and matches binary media types exactly. So: every variable the function reads is
declared, the env-vars file overrides exactly what is needed with the emulator's real names, the
image types are listed one by one, and every route the app serves is routed.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from PIL import Image

from tests.conftest import CAT_LABELS, EVENTS
from tests.lambda_context import LambdaContext
from twopass.aws import reset_clients
from twopass.config import REPO_ROOT, Settings
from twopass.imaging import ALLOWED_FORMATS
from twopass.local import samlocal
from twopass.local import template as tpl
from twopass.local.provision import API_FUNCTION, Provisioned, provision
from twopass.local.stack import free_port

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
FIELD_ENV = {f.name: f.metadata["env"] for f in fields(Settings)}
KEY = "local-test-key"  # the key the committed API Gateway events carry


@cache
def _cfn(**parameters: str) -> dict[str, Any]:
    return tpl.transform(tpl.load(), parameters)


def _declared() -> dict[str, Any]:
    return tpl.function_environment(_cfn(), API_FUNCTION)


def _api_body(**parameters: str) -> dict[str, Any]:
    body: dict[str, Any] = _cfn(**parameters)["Resources"]["Api"]["Properties"]["Body"]
    return body


def rest_event(
    method: str, path: str, *, body: bytes | str | None = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """An API Gateway REST (v1) proxy event, as `sam local start-api` and API Gateway send it."""
    event: dict[str, Any] = copy.deepcopy(json.loads((EVENTS / "rest_health.json").read_text()))
    event.update(httpMethod=method, path=path, resource=path, body=None, isBase64Encoded=False)
    event["requestContext"].update(httpMethod=method, path=path, resourcePath=path)
    event["headers"].pop("x-api-key", None)
    event["multiValueHeaders"].pop("x-api-key", None)
    for name, value in (headers or {}).items():
        event["headers"][name] = value
        event["multiValueHeaders"][name] = [value]
    if isinstance(body, bytes):
        event.update(body=base64.b64encode(body).decode(), isBase64Encoded=True)
    elif body is not None:
        event["body"] = body
    return event


def load_handler() -> Handler:
    """A fresh import of the deployed handler module (functions/api/app.py), reading the current env."""
    spec = importlib.util.spec_from_file_location("api_handler_sam_local", REPO_ROOT / "functions/api/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda evt, ctx: module.handler(evt, ctx)


def answer(response: dict[str, Any]) -> Any:
    text = response["body"]
    if response.get("isBase64Encoded"):
        text = base64.b64decode(text).decode()
    return json.loads(text)


# ---------------------------------------------------------------- the function's environment


def test_template_declares_what_sam_local_must_override() -> None:
    env = _declared()
    # Empty on AWS: the real endpoints, and API Gateway's usage plan checks the keys.
    assert env["AWS_ENDPOINT_URL"] == ""
    assert env["TWOPASS_API_KEYS"] == ""
    assert env["POWERTOOLS_TRACE_DISABLED"] == {"Fn::If": ["TracingOn", "false", "true"]}
    assert env["POWERTOOLS_METRICS_DISABLED"] == "false"


def test_every_setting_the_function_reads_is_declared(
    aws: Settings, monkeypatch: pytest.MonkeyPatch, cat_jpeg: bytes
) -> None:
    """Drive the deployed handler through every route and record which settings it reads."""
    read: set[str] = set()
    plain = object.__getattribute__

    def recording(self: Settings, name: str) -> Any:
        if name in FIELD_ENV:
            read.add(name)
        return plain(self, name)

    monkeypatch.setattr(Settings, "__getattribute__", recording)
    monkeypatch.setenv("TWOPASS_API_KEYS", KEY)
    # As the local stacks set them, so a loopback callback URL is accepted without DNS.
    monkeypatch.setenv("TWOPASS_CALLBACK_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("TWOPASS_CALLBACK_ALLOW_HTTP", "true")
    reset_clients()
    handler = load_handler()
    key = {"x-api-key": KEY}
    predicted = handler(rest_event("GET", "/predict/test", headers=key), LambdaContext())
    assert predicted["statusCode"] == 200, predicted
    job_id = answer(predicted)["job_id"]
    calls = [
        rest_event("GET", "/health"),
        rest_event("GET", "/health/all", headers=key),
        rest_event("GET", "/metadata", headers=key),
        rest_event("GET", "/openapi.json"),
        rest_event("GET", "/docs"),
        rest_event("POST", "/predict", body=cat_jpeg, headers={**key, "Content-Type": "image/jpeg"}),
        rest_event(
            "POST",
            "/predict",
            body=json.dumps(
                {"image_data": base64.b64encode(cat_jpeg).decode(), "callback_url": "http://127.0.0.1:9/hook"}
            ),
            headers={**key, "Content-Type": "application/json", "Idempotency-Key": "sam-local-1"},
        ),
        rest_event("GET", f"/job/{job_id}", headers=key),
        rest_event("GET", "/metadata"),  # no key: 403
    ]
    statuses = [handler(event, LambdaContext())["statusCode"] for event in calls]
    assert statuses == [200, 200, 200, 200, 200, 200, 200, 200, 403]

    declared = set(_declared())
    undeclared = sorted(FIELD_ENV[name] for name in read if FIELD_ENV[name] not in declared)
    assert undeclared == [], f"the API reads {undeclared}: declare them on ApiFunction (empty = the default)"
    # The recording saw the request path, not just start-up.
    assert {"api_keys", "queue_url", "table_name", "max_image_bytes", "callback_allow_http"} <= read


def _provisioned() -> Iterator[Provisioned]:
    from moto import mock_aws

    with mock_aws():
        yield provision(lambda service: boto3.client(service, region_name="us-east-1"))


@pytest.fixture
def provisioned() -> Iterator[Provisioned]:
    yield from _provisioned()


def test_env_file_overrides_only_declared_variables_with_real_names(provisioned: Provisioned, tmp_path: Path) -> None:
    env = samlocal.function_env(
        provisioned,
        endpoint_url="http://172.17.0.1:4566",
        api_key="k1",
        # A shell setting the template leaves to the default is passed on; one it sets is not.
        inherited={"TWOPASS_TOP_K": "3", "TWOPASS_QUEUE_URL": "elsewhere", "HOME": "/root"},
    )
    path = samlocal.write_env_file(env, tmp_path / "env.json")
    written = json.loads(path.read_text())

    assert list(written) == [API_FUNCTION]
    variables = written[API_FUNCTION]
    # sam local silently drops a variable the template does not declare.
    assert set(variables) <= set(_declared())
    assert all(isinstance(v, str) for v in variables.values())
    # Refs arrive in sam local as logical ids; the file carries what the emulator created.
    resources = provisioned.resources
    assert variables["TWOPASS_QUEUE_URL"] == resources["JobsQueue"]
    assert variables["TWOPASS_QUEUE_URL"].startswith("http")
    assert variables["TWOPASS_TABLE_NAME"] == resources["JobsTable"]
    assert variables["TWOPASS_PAYLOAD_BUCKET"] == resources["PayloadBucket"]
    assert not set(variables.values()) & set(resources)
    assert variables["AWS_ENDPOINT_URL"] == "http://172.17.0.1:4566"
    assert variables["TWOPASS_API_KEYS"] == "k1"
    assert variables["TWOPASS_TOP_K"] == "3"
    # As for make run: no X-Ray daemon or EMF collector, loopback callbacks allowed.
    assert variables["POWERTOOLS_TRACE_DISABLED"] == "true"
    assert variables["POWERTOOLS_METRICS_DISABLED"] == "true"
    assert variables["TWOPASS_CALLBACK_ALLOW_HTTP"] == "true"
    # Inside the container the fast model is where its layer unpacks: the template's path stays.
    assert "TWOPASS_FAST_MODEL" not in variables
    assert "HOME" not in variables


def test_env_file_refuses_a_template_that_does_not_declare_the_endpoint(provisioned: Provisioned) -> None:
    template = copy.deepcopy(provisioned.template)
    del template["Resources"][API_FUNCTION]["Properties"]["Environment"]["Variables"]["AWS_ENDPOINT_URL"]
    stripped = Provisioned(
        provisioned.stack_name, provisioned.resources, provisioned.outputs, provisioned.api_env, template
    )
    with pytest.raises(samlocal.SamLocalError, match="AWS_ENDPOINT_URL"):
        samlocal.function_env(stripped, endpoint_url="http://127.0.0.1:4566", api_key=None)


def test_provisioned_env_leaves_empty_declarations_to_the_code() -> None:
    # An empty AWS_ENDPOINT_URL from the template must never hide the local emulator's.
    (provisioned,) = list(_provisioned())
    assert "AWS_ENDPOINT_URL" not in provisioned.api_env
    assert "" not in provisioned.api_env.values()


def _sam_resolved(env_file: dict[str, str], provisioned: Provisioned) -> dict[str, str]:
    """The function's environment as `sam local start-api --env-vars` builds it: the template's
    variables with every resource Ref as its logical id, then the file's values for declared names."""
    cfn = provisioned.template
    params = tpl.parameter_defaults(cfn)
    resolved = tpl.resolve(_declared(), lambda logical_id, _attr: logical_id, params, cfn.get("Conditions"))
    env = {k: str(v) for k, v in resolved.items()}
    assert env["TWOPASS_QUEUE_URL"] == "JobsQueue"  # what the issue saw without the file
    env.update({k: v for k, v in env_file.items() if k in env})
    return env


@pytest.mark.e2e
def test_function_under_sam_local_env_reaches_the_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cat_jpeg: bytes
) -> None:
    """The deployed handler, with the environment sam local would give it from the written file,
    answers every kind of request against the emulator that make sam-local starts."""
    port = free_port()
    runner = samlocal.SamLocal(
        emulator_port=port, function_endpoint=f"http://127.0.0.1:{port}", api_key=KEY, env_file=tmp_path / "env.json"
    )
    try:
        runner.start_emulator()
        path = runner.create_resources()
        assert runner.provisioned is not None
        env = _sam_resolved(json.loads(path.read_text())[API_FUNCTION], runner.provisioned)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("TWOPASS_FAST_MODEL")  # /opt is the container's; here the checkout's
        reset_clients()
        handler = load_handler()
        key = {"x-api-key": KEY}

        raw = handler(
            rest_event("POST", "/predict", body=cat_jpeg, headers={**key, "Content-Type": "image/jpeg"}),
            LambdaContext(),
        )
        assert raw["statusCode"] == 200, raw
        assert answer(raw)["efficientnet-lite0"] in CAT_LABELS
        job = handler(rest_event("GET", f"/job/{answer(raw)['job_id']}", headers=key), LambdaContext())
        assert job["statusCode"] == 200 and answer(job)["status"] == "queued"
        assert handler(rest_event("GET", "/predict/test"), LambdaContext())["statusCode"] == 403

        sqs = runner.client("sqs")
        messages = sqs.receive_message(QueueUrl=runner.function_vars["TWOPASS_QUEUE_URL"], MaxNumberOfMessages=10)
        assert [answer(raw)["job_id"]] == [json.loads(m["Body"])["job_id"] for m in messages["Messages"]]
    finally:
        reset_clients()
        runner.stop()


# ---------------------------------------------------------------- media types and routes


def test_binary_media_types_list_every_image_type_exactly() -> None:
    types = set(_api_body()["x-amazon-apigateway-binary-media-types"])
    # API Gateway honours the wildcard; sam local needs each type the API decodes by name.
    Image.init()  # registers every format plugin, and with it each format's MIME type
    exact = {Image.MIME[fmt] for fmt in ALLOWED_FORMATS}
    assert exact == {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}
    assert exact | {"image/*", "application/octet-stream"} <= types


def _template_routes(**parameters: str) -> dict[tuple[str, str], Any]:
    """(METHOD, path) → the method's OpenAPI object, for every route with a Lambda integration."""
    routes = {}
    for path, item in _api_body(**parameters)["paths"].items():
        for method, spec in item.items():
            if "x-amazon-apigateway-integration" in spec:
                routes[(method.upper(), path)] = spec
    return routes


def _matches(template_path: str, concrete: str) -> bool:
    pattern = re.sub(r"\\\{[^}]+\\\+\\\}", ".+", re.escape(template_path))
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)
    return re.fullmatch(pattern, concrete) is not None


def _walk(routes: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(METHOD, path pattern) of every endpoint, through included routers and mounts."""
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's record of include_router()
            yield from _walk(route.original_router.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "methods") and hasattr(route, "path"):
            yield from ((m, prefix + route.path) for m in route.methods or ())
        elif hasattr(route, "routes") and hasattr(route, "path"):  # a Mount
            yield from _walk(route.routes, prefix + route.path)


def _app_routes() -> set[tuple[str, str]]:
    """(METHOD, a concrete path) for every route the app serves, its docs included."""
    from twopass.api.app import create_app

    app = create_app(settings=Settings(table_name="t", queue_url="q"), emit_metrics=False)
    routes = set()
    for method, path in _walk(app.routes):
        concrete = re.sub(r"\{[^}]+\}", "x", re.sub(r"\{[^}:]+:path\}", "x/y", path))
        if method not in ("HEAD", "OPTIONS"):  # API Gateway answers these itself
            routes.add((method, concrete))
    return routes


def test_every_route_the_app_serves_is_routed() -> None:
    template = _template_routes()
    missing = sorted(
        f"{method} {path}"
        for method, path in _app_routes()
        if not any(m == method and _matches(t, path) for m, t in template)
    )
    assert missing == [], "add these as ApiFunction events in template.yaml (else API Gateway answers 403)"
    assert {("GET", "/openapi.json"), ("GET", "/docs"), ("POST", "/predict")} <= _app_routes()
    # Swagger UI's own files, served by the app under /docs/.
    assert any(m == "GET" and _matches(t, "/docs/swagger-ui-bundle.js") for m, t in template)


def _needs_key(spec: Any, **parameters: str) -> bool:
    cfn = _cfn(**parameters)
    security = tpl.resolve(
        spec.get("security"), lambda *_: "", tpl.parameter_defaults(cfn, parameters), cfn["Conditions"]
    )
    return bool(security)


@pytest.mark.parametrize(
    ("parameters", "docs_keyed"),
    [({}, False), ({"ApiDocsPublic": "false"}, True), ({"ApiDocsPublic": "false", "ApiKeyRequired": "false"}, False)],
)
def test_docs_are_open_like_health_unless_turned_off(parameters: dict[str, str], docs_keyed: bool) -> None:
    routes = _template_routes(**parameters)
    docs = [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/{proxy+}")]
    assert [_needs_key(routes[r], **parameters) for r in docs] == [docs_keyed] * 3
    assert not _needs_key(routes[("GET", "/health")], **parameters)
    assert _needs_key(routes[("POST", "/predict")], **parameters) == (parameters.get("ApiKeyRequired") != "false")


# ---------------------------------------------------------------- make sam-local's own logic


def _fake_docker(tmp_path: Path, script: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(f"#!/bin/sh\n{script}\n")
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    return str(bin_dir)


def test_missing_docker_is_said_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    problem = samlocal.docker_problem()
    assert problem is not None and "Docker is not installed" in problem and "make run" in problem

    monkeypatch.setenv("PATH", _fake_docker(tmp_path, "echo 'Cannot connect to the Docker daemon' >&2; exit 1"))
    problem = samlocal.docker_problem()
    assert problem is not None and "Cannot connect to the Docker daemon" in problem

    monkeypatch.setenv("PATH", _fake_docker(tmp_path, "echo 28.2.2"))
    assert samlocal.docker_problem() is None


def test_main_stops_before_starting_anything_without_docker_or_sam(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert samlocal.main(["--port", "1"]) == 2
    assert "make sam-local: Docker is not installed" in capsys.readouterr().err

    monkeypatch.setenv("PATH", _fake_docker(tmp_path, "exit 0"))
    assert samlocal.main(["--check-docker"]) == 0
    assert samlocal.main(["--sam", str(tmp_path / "no-sam")]) == 2
    assert "the SAM CLI was not found" in capsys.readouterr().err


def test_build_is_due_when_a_source_is_newer(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "mod.py").write_text("x = 1\n")
    build = tmp_path / "build"
    assert samlocal.needs_build(build, [source])
    build.mkdir()
    (build / "template.yaml").write_text("built\n")
    os.utime(source / "pkg" / "mod.py", (1, 1))
    assert not samlocal.needs_build(build, [source])
    (source / "pkg" / "new.py").write_text("y = 2\n")
    assert samlocal.needs_build(build, [source])


def test_start_api_command_serves_the_built_template_with_the_env_file() -> None:
    args = samlocal.start_api_command(
        "sam", env_file=Path("/x/env.json"), host="127.0.0.1", port=3001, region="us-east-1", extra=["--debug"]
    )
    assert args[:3] == ["sam", "local", "start-api"]
    assert "--template" not in args  # from the repository root SAM picks .aws-sam/build/template.yaml
    pairs = dict(zip(args[3::2], args[4::2], strict=False))
    assert pairs["--env-vars"] == "/x/env.json" and pairs["--host"] == "127.0.0.1" and pairs["--port"] == "3001"
    assert args[-1] == "--debug"
    env = samlocal.sam_environment({"AWS_PROFILE": "prod", "PATH": "/bin"})
    assert "AWS_PROFILE" not in env and env["AWS_ACCESS_KEY_ID"] == "testing" and env["SAM_CLI_TELEMETRY"] == "0"


def test_default_addresses_by_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", _fake_docker(tmp_path, "echo '127.0.0.1 '"))
    # Docker Engine on Linux: the host's address on the bridge (loopback here, which this host can bind).
    assert samlocal.default_addresses(4566, "linux") == ("127.0.0.1", "http://127.0.0.1:4566")
    # Docker Desktop: loopback, reached from the container as host.docker.internal.
    assert samlocal.default_addresses(4566, "darwin") == ("127.0.0.1", "http://host.docker.internal:4566")
    monkeypatch.setenv("PATH", _fake_docker(tmp_path, "echo '192.0.2.1 '"))  # not an address of this host
    assert samlocal.default_addresses(4566, "linux") == ("127.0.0.1", "http://host.docker.internal:4566")


FAKE_SAM = """#!{python}
# Stands in for the SAM CLI: records its arguments, then serves GET /health on --port like start-api.
import http.server, json, pathlib, sys
args = sys.argv[1:]
pathlib.Path({record!r}).write_text(json.dumps(args))
port = int(args[args.index("--port") + 1])

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b'{{"health": "ok"}}')

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def _closed(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.e2e
@pytest.mark.parametrize("stop_signal", ["SIGINT", "SIGTERM"])
def test_main_runs_the_whole_sequence_and_stops_everything(tmp_path: Path, stop_signal: str) -> None:
    """`python -m twopass.local.samlocal` with a stand-in SAM CLI: emulator, resources, env file,
    start-api with it, the banner once /health answers; a signal then stops every child."""
    import signal
    import subprocess
    import sys
    import time

    record = tmp_path / "sam-args.json"
    sam = tmp_path / "sam"
    sam.write_text(FAKE_SAM.format(python=sys.executable, record=str(record)))
    sam.chmod(0o755)
    env = {**os.environ, "PATH": f"{_fake_docker(tmp_path, 'exit 0')}{os.pathsep}{os.environ['PATH']}"}
    api_port, emulator_port = free_port(), free_port()
    env_file = tmp_path / "env.json"
    args = [
        sys.executable, "-m", "twopass.local.samlocal", "--sam", str(sam), "--no-build", "--workers", "0",
        "--port", str(api_port), "--emulator-port", str(emulator_port), "--emulator-host", "127.0.0.1",
        "--function-endpoint", f"http://127.0.0.1:{emulator_port}", "--env-file", str(env_file),
        "--", "--warm-containers", "EAGER",
    ]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while not any("twopass is running" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())
        called = json.loads(record.read_text())
        assert called[:2] == ["local", "start-api"] and called[-2:] == ["--warm-containers", "EAGER"]
        assert called[called.index("--env-vars") + 1] == str(env_file)
        variables = json.loads(env_file.read_text())[API_FUNCTION]
        assert variables["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{emulator_port}"
        sqs = boto3.client("sqs", endpoint_url=f"http://127.0.0.1:{emulator_port}", region_name="us-east-1")
        names = [url.rsplit("/", 1)[-1] for url in sqs.list_queues()["QueueUrls"]]
        assert variables["TWOPASS_QUEUE_URL"].rsplit("/", 1)[-1] in names  # the queue exists in the emulator

        proc.send_signal(getattr(signal, stop_signal))
        assert proc.wait(60) == 0
        assert _closed(api_port) and _closed(emulator_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.e2e
def test_a_signal_while_starting_stops_what_was_started(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    sam = tmp_path / "sam"
    sam.write_text("#!/bin/sh\nexec sleep 600\n")  # a start-api that never opens its port
    sam.chmod(0o755)
    env = {**os.environ, "PATH": f"{_fake_docker(tmp_path, 'exit 0')}{os.pathsep}{os.environ['PATH']}"}
    emulator_port = free_port()
    env_file = tmp_path / "env.json"
    args = [
        sys.executable, "-m", "twopass.local.samlocal", "--sam", str(sam), "--no-build", "--workers", "1",
        "--port", str(free_port()), "--emulator-port", str(emulator_port), "--emulator-host", "127.0.0.1",
        "--function-endpoint", f"http://127.0.0.1:{emulator_port}", "--env-file", str(env_file),
    ]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not env_file.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        time.sleep(1)  # start-api and the worker are being spawned
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130
        assert "interrupted" in (proc.stderr.read() if proc.stderr else "")
        assert _closed(emulator_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

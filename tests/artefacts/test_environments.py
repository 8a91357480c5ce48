"""The shipped artefacts run from exactly what they ship: no development packages to lean on.

The worker runs from a clean environment built from the worker image's requirement file, with the
task definition's environment and every optional feature on (signed callbacks, an image through the
payload bucket, the dead-letter sweep); the API handler runs from a clean environment built from the
deps layer's requirement file, as Lambda invokes it (tracing and metrics on). Both talk to the local
emulator over loopback. Environments are built once per requirement file and cached (tests/artefacts/envs.py).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import boto3
import pytest

from tests.artefacts.envs import LIBRARY, clean_env, library_env
from tests.conftest import CAT_LABELS, EVENTS
from twopass.config import REPO_ROOT
from twopass.local import template as tpl
from twopass.local.provision import Provisioned, provision
from twopass.local.stack import EMULATOR_ENV, free_port, wait_http

# The first run builds the two environments from PyPI (about two minutes on two cores).
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

WORKER_REQUIREMENTS = REPO_ROOT / "infra" / "worker" / "requirements-cpu.txt"
LAYER_REQUIREMENTS = REPO_ROOT / "layers" / "deps" / "requirements.txt"
CALLBACK_SECRET = "artefact-test-secret"


# ---------------------------------------------------------------- the clean environments


@pytest.fixture(scope="module")
def worker_python() -> Path:
    return clean_env(WORKER_REQUIREMENTS) / "bin" / "python"


@pytest.fixture(scope="module")
def layer_python() -> Path:
    return clean_env(LAYER_REQUIREMENTS) / "bin" / "python"


def _imports(python: Path, module: str) -> bool:
    code = f"import {module}"
    return subprocess.run([python, "-c", code], env=library_env(), capture_output=True, check=False).returncode == 0


def test_the_environments_hold_only_their_artefact(worker_python: Path, layer_python: Path) -> None:
    # If these imported, the tests below could pass on packages the artefacts do not ship.
    for python, absent in (
        (worker_python, ("fastapi", "moto", "pytest", "mangum")),
        (layer_python, ("moto", "pytest")),
    ):
        assert [m for m in absent if _imports(python, m)] == [], python
    where = subprocess.run(
        [worker_python, "-c", "import twopass; print(twopass.__file__)"],
        env=library_env(), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert Path(where.strip()).is_relative_to(LIBRARY)


# ---------------------------------------------------------------- the emulator, as deployed


def _client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=EMULATOR_ENV["AWS_REGION"],
        aws_access_key_id=EMULATOR_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=EMULATOR_ENV["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=EMULATOR_ENV["AWS_SESSION_TOKEN"],
    )


@dataclass
class Emulator:
    endpoint: str
    provisioned: Provisioned

    def client(self, service: str) -> Any:
        return _client(self.endpoint, service)

    def aws_env(self) -> dict[str, str]:
        return {**EMULATOR_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def lookup(self, logical_id: str, attribute: str | None) -> str:
        physical = self.provisioned.resources[logical_id]
        if attribute in (None, "Name"):
            return physical
        raise KeyError(f"GetAtt {logical_id}.{attribute}")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    port = free_port()
    log = (tmp_path_factory.mktemp("emulator") / "emulator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "twopass.local.emulator", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **EMULATOR_ENV}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(f"{endpoint}/moto-api/", 60, proc)
        yield Emulator(endpoint, provision(lambda service: _client(endpoint, service), stack_name="twopass-artefacts"))
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


# ---------------------------------------------------------------- the API function from the layer


class LambdaProcess:
    """One warm Lambda execution environment: the handler imported once, invoked per event."""

    def __init__(self, python: Path, env: dict[str, str], log: Path) -> None:
        read, write = os.pipe()
        self._log = log.open("wb")
        self.log_path = log
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).with_name("invoke_handler.py")), str(REPO_ROOT / "functions" / "api"),
             "app.handler", str(write)],
            env=env, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT, pass_fds=(write,),
            cwd=log.parent, text=True,
        )  # fmt: skip
        os.close(write)
        self._responses: IO[str] = os.fdopen(read)
        self._lock = threading.Lock()
        assert json.loads(self._read(120)) == {"ready": True}, self.log_path.read_text()[-3000:]

    def _read(self, timeout: float) -> str:
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            line = self._responses.readline()
        finally:
            timer.cancel()
        assert line, f"the handler process died:\n{self.log_path.read_text()[-3000:]}"
        return line

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(event) + "\n")
            self.proc.stdin.flush()
            response: dict[str, Any] = json.loads(self._read(60))
        return response

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._responses.close()
        self._log.close()


@dataclass
class XRayDaemon:
    """A UDP socket where the X-Ray SDK sends its segments (the daemon's address in Lambda)."""

    sock: socket.socket = field(default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

    def __post_init__(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536))
            except TimeoutError:
                return out


@pytest.fixture(scope="module")
def xray() -> Iterator[XRayDaemon]:
    daemon = XRayDaemon()
    yield daemon
    daemon.sock.close()


@pytest.fixture(scope="module")
def lambda_api(
    layer_python: Path, emulator: Emulator, xray: XRayDaemon, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LambdaProcess]:
    cfn = emulator.provisioned.template
    params = tpl.parameter_defaults(cfn, {"AWS::Region": EMULATOR_ENV["AWS_REGION"]})
    function = tpl.resolve(tpl.function_environment(cfn, "ApiFunction"), emulator.lookup, params, cfn.get("Conditions"))
    # Empty values stand for the code's defaults (declared for `sam local`): Lambda would pass them
    # empty, and the code reads empty as unset.
    function_env = {k: str(v) for k, v in function.items() if str(v) != ""}
    env = library_env({
        **function_env,
        **emulator.aws_env(),
        # What the Lambda runtime sets (tracing turns itself on only inside Lambda).
        "AWS_LAMBDA_FUNCTION_NAME": "twopass-ApiFunction",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        "LAMBDA_TASK_ROOT": str(REPO_ROOT / "functions" / "api"),
        "AWS_XRAY_DAEMON_ADDRESS": xray.address,
        # The fast-model layer unpacks at /opt; here it is the checkout's copy.
        "TWOPASS_FAST_MODEL": str(REPO_ROOT / "layers" / "models" / "fast" / Path(function_env["TWOPASS_FAST_MODEL"]).name),
        # The test's callback receiver listens on loopback http.
        "TWOPASS_CALLBACK_ALLOW_PRIVATE": "true",
        "TWOPASS_CALLBACK_ALLOW_HTTP": "true",
    })  # fmt: skip
    for off in ("POWERTOOLS_TRACE_DISABLED", "POWERTOOLS_METRICS_DISABLED", "TWOPASS_API_KEYS"):
        env.pop(off, None)
    process = LambdaProcess(layer_python, env, tmp_path_factory.mktemp("lambda") / "function.log")
    yield process
    process.close()


def event(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    data.update(changes)
    return data


def body(response: dict[str, Any]) -> dict[str, Any]:
    text = response["body"]
    if response.get("isBase64Encoded"):
        text = base64.b64decode(text).decode()
    return json.loads(text)  # type: ignore[no-any-return]


def predict_json(image: bytes, **fields: str) -> dict[str, Any]:
    payload = json.dumps({"image_data": base64.b64encode(image).decode(), **fields})
    data = event("rest_predict_json.json", body=payload)
    for headers in (data["headers"], data["multiValueHeaders"]):
        length = str(len(payload))
        headers["Content-Length"] = [length] if isinstance(headers["Content-Length"], list) else length
    return data


def job_status(api: LambdaProcess, job_id: str) -> dict[str, Any]:
    response = api.invoke(event("rest_job.json", path=f"/job/{job_id}", pathParameters={"job_id": job_id}))
    assert response["statusCode"] == 200, response
    return body(response)


def test_api_function_answers_from_the_layer(lambda_api: LambdaProcess, xray: XRayDaemon) -> None:
    response = lambda_api.invoke(event("rest_predict_test.json"))
    assert response["statusCode"] == 200, response
    answer = body(response)
    assert answer["efficientnet-lite0"] in CAT_LABELS
    assert answer["status"] == "queued"
    assert job_status(lambda_api, answer["job_id"])["status"] in ("queued", "running", "succeeded")
    # Tracing was on: the X-Ray SDK sent the handler's subsegments to the daemon's address.
    segments = b"".join(xray.received())
    assert b'"format": "json"' in segments or b'"format":"json"' in segments, segments[:500]
    # Metrics were on: EMF records on stdout, where Lambda's log collector finds them.
    assert '"_aws"' in lambda_api.log_path.read_text()


# ---------------------------------------------------------------- the worker from the image's requirements


@dataclass
class Callbacks:
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def callbacks() -> Iterator[Callbacks]:
    got = Callbacks()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            got.received.append(({k.lower(): v for k, v in self.headers.items()}, raw))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    got.url = f"http://127.0.0.1:{server.server_address[1]}/done"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield got
    server.shutdown()
    server.server_close()


def big_cat_jpeg(cat_jpeg: bytes, over: int) -> bytes:
    """The cat, upscaled until the file is over ``over`` bytes: it travels through the payload bucket."""
    from PIL import Image

    image = Image.open(io.BytesIO(cat_jpeg)).convert("RGB")
    side = 1024
    while True:
        out = io.BytesIO()
        image.resize((side, side)).save(out, "JPEG", quality=97)
        if out.tell() > over:
            return out.getvalue()
        side += 512


def worker_env(emulator: Emulator) -> dict[str, str]:
    """The ECS task's environment as the template writes it, resolved against the emulator's stack."""
    cfn = emulator.provisioned.template
    params = tpl.parameter_defaults(cfn, {"AWS::Region": EMULATOR_ENV["AWS_REGION"]})
    task = {
        k: str(v)
        for k, v in tpl.resolve(
            tpl.container_environment(cfn, "WorkerTaskDefinition"), emulator.lookup, params, cfn.get("Conditions")
        ).items()
    }
    return library_env({
        **task,
        **emulator.aws_env(),
        # The task's secret (Secrets: TWOPASS_CALLBACK_SECRET), and loopback callbacks for the test.
        "TWOPASS_CALLBACK_SECRET": CALLBACK_SECRET,
        "TWOPASS_CALLBACK_ALLOW_PRIVATE": "true",
        "TWOPASS_CALLBACK_ALLOW_HTTP": "true",
        # The image bakes the model in at /opt/models; here it is the checkout's copy.
        "TWOPASS_SLOW_MODEL": str(REPO_ROOT / "layers" / "models" / "slow" / Path(task["TWOPASS_SLOW_MODEL"]).name),
        # The sweep runs every minute by default; the test cannot wait that long.
        "TWOPASS_DLQ_SWEEP_SECONDS": "1",
        # The task requires CUDA; this machine has no GPU, so the worker would (rightly) refuse to start
        # (test_worker_checks.py): the cpu target's setting, from requirements-cpu.txt's CPU build.
        "TWOPASS_PROVIDERS": "cpu",
    })  # fmt: skip


def dead_letter(emulator: Emulator, job_id: str) -> dict[str, dict[str, Any]]:
    """Move ``job_id``'s message to the DLQ, as ``maxReceiveCount`` crashed deliveries would; returns
    the bodies of the messages seen on the way, by job id."""
    sqs = emulator.client("sqs")
    queue = emulator.provisioned.resources["JobsQueue"]
    dlq = emulator.provisioned.resources["JobsDeadLetterQueue"]
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=30).get("Messages", [])
        for message in messages:
            data = json.loads(message["Body"])
            seen[data["job_id"]] = data
            if data["job_id"] == job_id:
                sqs.send_message(QueueUrl=dlq, MessageBody=message["Body"])
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
            else:
                sqs.change_message_visibility(
                    QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
        if job_id in seen:
            return seen
    raise AssertionError(f"no message for job {job_id}")


def test_worker_runs_from_the_image_requirements_with_every_feature_on(
    worker_python: Path, lambda_api: LambdaProcess, emulator: Emulator, callbacks: Callbacks,
    cat_jpeg: bytes, tmp_path: Path,
) -> None:  # fmt: skip
    from twopass.notify import SIGNATURE_HEADER, verify

    # Three jobs through the API function: a claim-checked image with a callback, a plain one, and
    # one whose message ends in the DLQ (the sweep must mark it failed).
    inline_limit = int(emulator.provisioned.api_env.get("TWOPASS_INLINE_IMAGE_BYTES", 256 * 1024))
    big = lambda_api.invoke(predict_json(big_cat_jpeg(cat_jpeg, inline_limit), callback_url=callbacks.url))
    plain = lambda_api.invoke(predict_json(cat_jpeg))
    doomed = lambda_api.invoke(predict_json(cat_jpeg))
    assert [r["statusCode"] for r in (big, plain, doomed)] == [200, 200, 200], (big, plain, doomed)
    big_id, plain_id, doomed_id = (body(r)["job_id"] for r in (big, plain, doomed))
    messages = dead_letter(emulator, doomed_id)
    if big_id in messages:  # seen on the way: the big image travels as a claim check, not inline
        assert "image_ref" in messages[big_id] and "image_b64" not in messages[big_id]

    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [worker_python, "-m", "twopass.worker"], env=worker_env(emulator), cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                assert worker.poll() is None, f"worker exited {worker.returncode}:\n{log_path.read_text()[-4000:]}"
                states = {j: job_status(lambda_api, j) for j in (big_id, plain_id, doomed_id)}
                if all(s["status"] in ("succeeded", "failed") for s in states.values()) and callbacks.received:
                    break
                time.sleep(0.3)
            else:
                raise AssertionError(f"jobs not final: {states}\n{log_path.read_text()[-4000:]}")
            # SIGTERM, as `docker stop` and ECS send it: the worker drains and exits 0.
            stopped_at = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=int(tpl.parameter_defaults(tpl.load())["WorkerStopTimeout"]))
            drain = time.monotonic() - stopped_at
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    print(f"worker from {WORKER_REQUIREMENTS.name}: SIGTERM to exit {drain:.1f} s")
    assert code == 0, log_path.read_text()[-4000:]

    assert states[big_id]["status"] == "succeeded" and states[big_id][big_id]["prediction"] in CAT_LABELS
    assert states[plain_id]["status"] == "succeeded"
    assert states[doomed_id]["status"] == "failed" and "dead-letter" in (states[doomed_id]["error"] or "")
    (headers, raw), *_ = callbacks.received
    assert verify(CALLBACK_SECRET, raw, headers[SIGNATURE_HEADER.lower()], tolerance=300)
    assert json.loads(raw)["job_id"] == big_id and json.loads(raw)["status"] == "succeeded"
    # The big image went through the bucket, and the worker dropped it once its job had succeeded.
    bucket = emulator.provisioned.resources["PayloadBucket"]
    assert emulator.client("s3").list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0

"""CORS under a real ``sam local start-api`` (``make sam-local``), as a browser page sees it over HTTP.

The live tests run only where ``TWOPASS_SAM_CLI`` names a SAM CLI and Docker answers (``make
sam-local-check`` sets both up); elsewhere they are skipped and say why. They start ``make
sam-local`` on free ports, wait for its banner, call the API from other origins, and stop it (Ctrl-C,
as a terminal would) however they end.

What they hold ``make sam-local`` to (docs/sam-local.md, "What differs from AWS"): SAM CLI answers
every ``OPTIONS`` itself from the Api's ``Cors`` (the function never sees a preflight), as API Gateway
does, so a page on a local dev server gets its preflight answered without a key; SAM also puts its
``Access-Control-Allow-Origin`` on every answer of the function, errors included, replacing the
origin the function named, while the function's ``Access-Control-Expose-Headers`` and ``Vary`` stay.

Settings (environment):

- ``TWOPASS_SAM_CLI``: the ``sam`` to run (``make sam-local SAM_CLI=...``); unset: skipped.
- ``TWOPASS_SAM_HOST_NETWORK=1``: the function's container shares this host's network, so the
  emulator listens on 127.0.0.1 and the function reaches it there (``EMULATOR_HOST``,
  ``FUNCTION_ENDPOINT``); otherwise ``make sam-local`` picks per platform.
- ``TWOPASS_SAM_LOCAL_ARGS``: more ``sam local start-api`` arguments (``SAM_LOCAL_ARGS``).
- ``TWOPASS_SAM_LOCAL_TIMEOUT``: seconds to wait for the first answer, ``sam build`` included (900).

``test_sam_local_args.py`` holds, without Docker, the command line to what makes the above true.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from twopass.config import REPO_ROOT
from twopass.local import samlocal
from twopass.local.services import DEFAULT_API_KEY
from twopass.local.stack import free_port

PHOTO = Path(__file__).resolve().parents[1] / "data" / "coffee.jpg"
DEV_SERVER = "http://localhost:5173"
OTHER_ORIGIN = "https://evil.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key,content-type"}
#: What SAM CLI puts in Access-Control-Allow-Origin, on preflights and the function's answers alike:
#: the template's ``Cors.AllowOrigin``, which is ``'*'`` once ``CorsAllowOrigins`` is set.
SAM_ALLOW_ORIGIN = "*"
#: The banner `make sam-local` prints once the function answered its first GET /health.
READY = "twopass is running under sam local start-api on"

pytestmark = [pytest.mark.e2e, pytest.mark.samlocal]


# ---------------------------------------------------------------- the running `make sam-local`


@dataclass
class SamLocalRun:
    """One ``make sam-local`` in its own process group, its output in ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path
    api_url: str
    started: float
    #: Seconds from `make sam-local` to its banner (build, emulator, SAM, the first cold /health).
    ready_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def output(self, tail: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-tail:])


def _skip_reason() -> str | None:
    sam = os.environ.get("TWOPASS_SAM_CLI")
    if not sam:
        return "TWOPASS_SAM_CLI does not name a SAM CLI (make sam-local-check sets it; needs Docker)"
    problem = samlocal.docker_problem() or samlocal.sam_problem(sam)
    return f"sam local start-api cannot run here: {problem}" if problem else None


def _make_command(api_port: int, emulator_port: int) -> list[str]:
    args = [
        "make", "--no-print-directory", "sam-local", f"SAM_CLI={os.environ['TWOPASS_SAM_CLI']}",
        f"PORT={api_port}", f"EMULATOR_PORT={emulator_port}",
    ]  # fmt: skip
    if os.environ.get("TWOPASS_SAM_HOST_NETWORK") == "1":
        args += ["EMULATOR_HOST=127.0.0.1", f"FUNCTION_ENDPOINT=http://127.0.0.1:{emulator_port}"]
    extra = shlex.split(os.environ.get("TWOPASS_SAM_LOCAL_ARGS", ""))
    if extra:
        args.append(f"SAM_LOCAL_ARGS={shlex.join(extra)}")
    return args


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): what a hard stop must not leave behind."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name is in parentheses and may hold spaces: the parent pid follows the last ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _stop(run: SamLocalRun, timeout: float = 90) -> str | None:
    """Ctrl-C to `make sam-local`'s group, as a terminal sends it: it stops SAM (which removes its
    containers), the worker and the emulator. Whatever is still alive after ``timeout`` is killed, and said."""
    # Its children run in process groups of their own and would outlive a killed make: note them first.
    family = _descendants(run.proc.pid)
    if run.proc.poll() is None:
        os.killpg(run.proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        run.proc.wait(timeout)
    hung = run.proc.poll() is None
    if hung:
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait()
    left = [pid for pid in family if _alive(pid)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if hung or left:
        return f"make sam-local did not stop everything within {timeout:.0f} s; killed make={hung}, pids {left}"
    return None


@pytest.fixture(scope="module")
def sam_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SamLocalRun]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    timeout = float(os.environ.get("TWOPASS_SAM_LOCAL_TIMEOUT", "900"))
    api_port, emulator_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("sam-local") / "make-sam-local.log"
    # The documented defaults, not this shell's settings: no TWOPASS_* variable reaches the stack.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOPASS_")}
    with log.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            _make_command(api_port, emulator_port),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = SamLocalRun(proc, log, f"http://127.0.0.1:{api_port}", started)
    try:
        # The banner, not our own polling: make sam-local sends the first (cold) request itself, and a
        # second one meanwhile would start a second container.
        while READY not in run.output(tail=400):
            if proc.poll() is not None:
                pytest.fail(f"make sam-local exited with code {proc.returncode}:\n{run.output()}")
            if time.monotonic() - started > timeout:
                pytest.fail(f"make sam-local did not answer within {timeout:.0f} s:\n{run.output()}")
            time.sleep(0.5)
        run.ready_s = time.monotonic() - started
        yield run
    finally:
        problem = _stop(run)
        print(f"\nsam local timings: ready after {run.ready_s:.1f} s; " + ", ".join(
            f"{name} {seconds * 1000:.0f} ms" for name, seconds in run.timings.items()
        ))  # fmt: skip
        if problem:
            pytest.fail(f"{problem}\n{run.output()}")


def _timed(
    run: SamLocalRun, name: str, method: str, path: str, *, headers: dict[str, str], content: bytes | None = None
) -> httpx.Response:
    """One request over real HTTP; the latency of the first of each ``name`` is kept for the summary."""
    started = time.monotonic()
    answer = httpx.request(method, run.api_url + path, headers=headers, content=content, timeout=60)
    run.timings.setdefault(name, time.monotonic() - started)
    return answer


def _listed(value: str | None) -> set[str]:
    return {item.strip().lower() for item in (value or "").split(",") if item.strip()}


def _assert_readable_by_the_page(answer: httpx.Response) -> None:
    """What a page needs to read an answer: the allow-origin, and the headers the API exposes."""
    assert answer.headers.get("access-control-allow-origin") == SAM_ALLOW_ORIGIN, answer.headers
    assert {"retry-after", "idempotent-replayed"} <= _listed(answer.headers.get("access-control-expose-headers"))
    assert "origin" in _listed(answer.headers.get("vary"))


# ---------------------------------------------------------------- live: preflights


@pytest.mark.parametrize("origin", [DEV_SERVER, "http://127.0.0.1:8080"])
def test_preflight_from_a_local_dev_server_needs_no_key(sam_local: SamLocalRun, origin: str) -> None:
    answer = _timed(sam_local, "first preflight", "OPTIONS", "/predict", headers={**PREFLIGHT, "Origin": origin})
    assert 200 <= answer.status_code < 300, answer.text
    assert answer.headers.get("access-control-allow-origin") == SAM_ALLOW_ORIGIN, answer.headers
    assert "POST" in {m.upper() for m in _listed(answer.headers.get("access-control-allow-methods"))}
    assert {"x-api-key", "content-type", "authorization", "idempotency-key"} <= _listed(
        answer.headers.get("access-control-allow-headers")
    )


def test_sam_answers_every_preflight_itself_like_api_gateway(sam_local: SamLocalRun) -> None:
    """Not the function: under `make run` these two preflights are refused (403, no allow-origin)."""
    other = _timed(
        sam_local, "other origin's preflight", "OPTIONS", "/predict", headers={**PREFLIGHT, "Origin": OTHER_ORIGIN}
    )
    odd_header = httpx.options(
        f"{sam_local.api_url}/predict",
        headers={**PREFLIGHT, "Origin": DEV_SERVER, "Access-Control-Request-Headers": "x-api-key,x-secret-admin"},
        timeout=60,
    )
    for answer in (other, odd_header):
        assert answer.status_code == 200 and answer.content == b""
        assert answer.headers.get("access-control-allow-origin") == SAM_ALLOW_ORIGIN
        # The function answers its 403s as JSON, and names the origin in Vary: neither is here.
        assert "origin" not in _listed(answer.headers.get("vary"))


# ---------------------------------------------------------------- live: the function's answers


def test_cross_origin_predict_and_its_replay_are_readable(sam_local: SamLocalRun) -> None:
    headers = {
        "Origin": DEV_SERVER,
        "x-api-key": DEFAULT_API_KEY,
        "Content-Type": "image/jpeg",
        "Idempotency-Key": f"sam-local-cors-{time.time_ns()}",
    }
    first = _timed(sam_local, "first POST /predict", "POST", "/predict", content=PHOTO.read_bytes(), headers=headers)
    replay = httpx.post(f"{sam_local.api_url}/predict", content=PHOTO.read_bytes(), headers=headers, timeout=60)
    assert first.status_code == 200, first.text
    assert first.json()["fast"]["label"] == "espresso"
    assert replay.status_code == 200 and replay.headers.get("idempotent-replayed") == "true"
    assert replay.json()["job_id"] == first.json()["job_id"]
    for answer in (first, replay):
        _assert_readable_by_the_page(answer)


def test_errors_carry_the_cors_headers(sam_local: SamLocalRun) -> None:
    key = {"Origin": DEV_SERVER, "x-api-key": DEFAULT_API_KEY}
    errors = {
        "no key": _timed(
            sam_local, "error answer", "POST", "/predict", content=PHOTO.read_bytes(),
            headers={"Origin": DEV_SERVER, "Content-Type": "image/jpeg"},
        ),
        "not an image": httpx.post(
            f"{sam_local.api_url}/predict", content=b"not an image",
            headers={**key, "Content-Type": "image/jpeg"}, timeout=60,
        ),
        "no such job": httpx.get(f"{sam_local.api_url}/job/{'0' * 32}", headers=key, timeout=60),
    }  # fmt: skip
    assert {what: answer.status_code for what, answer in errors.items()} == {
        "no key": 403,
        "not an image": 400,
        "no such job": 404,
    }
    assert errors["no key"].json()["error"] == "forbidden"
    for answer in errors.values():
        _assert_readable_by_the_page(answer)


def test_another_origin_gets_sams_allow_origin_but_nothing_exposed(sam_local: SamLocalRun) -> None:
    """The honest difference: on AWS the function's answer to another origin has no allow-origin;
    under sam local SAM adds its own. The function still names no origin and exposes nothing."""
    answer = httpx.get(f"{sam_local.api_url}/health", headers={"Origin": OTHER_ORIGIN}, timeout=60)
    assert answer.status_code == 200
    assert answer.headers.get("access-control-allow-origin") == SAM_ALLOW_ORIGIN
    assert "access-control-expose-headers" not in answer.headers
    assert "origin" not in _listed(answer.headers.get("vary"))

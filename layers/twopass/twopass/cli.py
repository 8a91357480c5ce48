"""``twopass``: classify photos, look up jobs, check health, run the local stack.

Standard library and the client SDK only (so httpx), so installing the package without its extras
(``pip install .`` or ``pipx install .`` in a clone) gives a working CLI; ``twopass local``,
``twopass redrive`` and ``twopass calibrate`` alone need the server packages.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import json
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from twopass import __version__
from twopass.client import (
    DEFAULT_URL,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    BatchItemError,
    Client,
    ClientError,
    Health,
    JobResult,
    ModelResult,
    NotFoundError,
    NotTwopassError,
    Prediction,
    RateLimitedError,
    ServerError,
    TransportError,
    WaitTimeoutError,
    hints,
)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_TIMEOUT: Final = 4
EXIT_AUTH: Final = 5
EXIT_INTERRUPTED: Final = 130
# When files end differently, the code that tells a script the most wins.
_PRIORITY: Final = (EXIT_AUTH, EXIT_UNAVAILABLE, EXIT_TIMEOUT, EXIT_FAILED)

#: What ``twopass jobs --status`` accepts: every job status.
JOB_STATUSES: Final = ("queued", "running", "succeeded", "failed", "cancelled", "expired")

#: ``twopass predict`` sends more files than this through ``POST /batches``, up to BATCH_FILES a call.
BATCH_OVER: Final = 8
BATCH_FILES: Final = 100

IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})

EPILOG: Final = """\
exit codes:
  0  success (with --wait: every job succeeded)
  1  some job failed, was cancelled or expired, or was not found; the server refused an image,
     a cancel (the job had ended) or a retry (wrong state, its image gone or replaced)
  2  usage error (bad option, no such path, no image files)
  3  server unreachable or unavailable (after retries), not a twopass API (check --url),
     or /health/all degraded
  4  --wait ran out of time before some job finished
  5  API key missing or refused
  When files end differently the first that applies of 5, 3, 4, 1 is returned.

environment:
  TWOPASS_URL      default for --url (else http://127.0.0.1:3000, where `twopass local` serves)
  TWOPASS_API_KEY  default for --api-key (the local stack of `make run` takes local-dev-key)

examples:
  twopass predict photos/ --wait
  twopass predict a.jpg b.png --json | jq .fast.label
  twopass job 3f0c9e0d4b0e4f6f9a5a2d1c7b8e9f00 --wait
  twopass predict urgent.jpg --priority high --deadline 60
  twopass jobs --status failed
  twopass retry 3f0c9e0d4b0e4f6f9a5a2d1c7b8e9f00
  twopass health --all
"""


# -- argument parsing ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="twopass",
        description="Classify images with a twopass deployment: a fast label at once, a slow one from the queue.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"twopass {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_predict(sub, common)
    _add_job_commands(sub, common)
    _add_service_commands(sub, common)
    return parser


#: argparse's type for the object ``add_subparsers`` returns.
Subparsers = argparse._SubParsersAction


def _common_options() -> argparse.ArgumentParser:
    """The global options, accepted before or after the subcommand."""
    # SUPPRESS keeps a value given before the subcommand from being overwritten by its default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"twopass API base URL (default: $TWOPASS_URL or {DEFAULT_URL})"
    )
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="API key sent as x-api-key ($TWOPASS_API_KEY)")
    common.add_argument(
        "--retries", type=_non_negative_int, default=argparse.SUPPRESS, help="retries per request (default 3)"
    )
    common.add_argument(
        "--http-timeout", type=_positive_float, default=argparse.SUPPRESS, help="seconds per HTTP request (default 30)"
    )

    return common


def _add_predict(sub: Subparsers[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    predict = sub.add_parser(
        "predict",
        parents=[common],
        help="classify image files and folders",
        description="Send each image to POST /predict (more than 8 files: POST /batches, up to 100 a call) and "
        "print the fast label; with --wait also the slow one.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders (walked)")
    predict.add_argument("--wait", action="store_true", help="wait for the slow model's labels")
    predict.add_argument(
        "--timeout",
        type=_non_negative_float,
        default=120.0,
        help="with --wait: seconds to wait for slow results, counted from the start (default 120)",
    )
    predict.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        help="predict (or batch) requests in flight at once (default 4)",
    )
    predict.add_argument("--json", action="store_true", help="one JSON object per file on stdout, as each completes")
    predict.add_argument(
        "--priority",
        choices=("high", "normal"),
        default=None,
        help="high: the high-priority queue, which workers take first (default: normal)",
    )
    predict.add_argument(
        "--deadline",
        type=_deadline,
        default=None,
        metavar="SECONDS",
        help="a job no worker started within SECONDS is never run and ends expired (default: the service's)",
    )
    predict.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal and there is more than one file)",
    )


def _add_job_commands(sub: Subparsers[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """job, cancel, retry and jobs: one job or the caller's list of them."""
    job = sub.add_parser(
        "job", parents=[common], help="show a job", description="Show a job's status and the slow model's result."
    )
    job.add_argument("job_id", metavar="ID")
    job.add_argument("--wait", action="store_true", help="wait until the job ended (succeeded, failed, cancelled…)")
    job.add_argument("--timeout", type=_non_negative_float, default=120.0, help="with --wait: seconds (default 120)")
    job.add_argument("--json", action="store_true", help="print the server's JSON")

    cancel = sub.add_parser(
        "cancel",
        parents=[common],
        help="cancel queued or running jobs",
        description="DELETE /job/{id} for each id: a queued job is never run, a running one has its slow result "
        "discarded. A job that had already ended is reported, and the exit code is then 1.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cancel.add_argument("job_ids", nargs="+", metavar="ID")
    cancel.add_argument("--json", action="store_true", help="print each cancelled job's JSON")

    retry = sub.add_parser(
        "retry",
        parents=[common],
        help="run failed, expired or cancelled jobs again",
        description="POST /job/{id}/retry for each id: the job is queued again under the same id while its image "
        "is still kept (right after a cancel, it waits up to 2 min for a worker to keep the image). A job in another "
        "state, or whose image is gone or was replaced, is reported, and the exit code is then 1.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    retry.add_argument("job_ids", nargs="+", metavar="ID")
    retry.add_argument("--json", action="store_true", help="print each queued job's JSON")

    jobs = sub.add_parser(
        "jobs",
        parents=[common],
        help="list your jobs, newest first",
        description="GET /jobs: the jobs of your API key, newest first, page after page.",
    )
    jobs.add_argument("--status", choices=JOB_STATUSES, default=None, help="only jobs in this status")
    jobs.add_argument("--limit", type=_positive_int, default=20, help="show at most this many jobs (default 20)")
    jobs.add_argument("--all", action="store_true", help="show every job (no --limit)")
    jobs.add_argument("--json", action="store_true", help="one JSON object per job on stdout")


def _add_service_commands(sub: Subparsers[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """health, and the operators' tools whose arguments their own modules parse."""
    health = sub.add_parser(
        "health", parents=[common], help="check the service", description="GET /health (or /health/all)."
    )
    health.add_argument("--all", action="store_true", help="every backend (GET /health/all)")
    health.add_argument("--json", action="store_true", help="print the server's JSON")

    redrive = sub.add_parser(
        "redrive",
        help="move dead-lettered jobs back to the job queue (operators; needs AWS credentials and boto3)",
        description="Receive every message in the dead-letter queue, reopen its failed job, send it back to the "
        "job queue and delete it from the DLQ. Jobs that succeeded meanwhile are dropped, never rerun. "
        "The DLQ is found from the job queue's redrive policy.",
    )
    redrive.add_argument("--queue-url", default=None, help="job queue URL (default: TWOPASS_QUEUE_URL)")
    redrive.add_argument("--table", default=None, help="job table name (default: TWOPASS_TABLE_NAME)")
    redrive.add_argument("--max", type=_positive_int, default=None, help="move at most this many messages")

    # Everything after `cost` / `plan` goes to twopass.tools.capacity_cli untouched, --help included.
    sub.add_parser(
        "cost",
        add_help=False,
        help="dollars per million images by AWS component, beside SageMaker async (`twopass cost --help`)",
    )
    sub.add_parser(
        "plan",
        add_help=False,
        help="GPU tasks, latency and template parameters for a load, by simulation (`twopass plan --help`)",
    )
    # Everything after `calibrate` goes to twopass.tools.calibrate untouched, --help included.
    sub.add_parser(
        "calibrate",
        add_help=False,
        help="choose the cascade's confidence threshold from both models' answers on your images "
        "(needs the server extras; `twopass calibrate --help`)",
    )
    # Everything after `model` goes to twopass.models.cli untouched, --help included.
    sub.add_parser(
        "model",
        add_help=False,
        help="write a model pack from your ONNX file and check it loads (`twopass model --help`)",
    )
    # Everything after `local` goes to `python -m twopass.local` untouched, --help included.
    sub.add_parser(
        "local",
        add_help=False,
        help="run the whole service on this machine (needs the server extras; `twopass local --help`)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _deadline(text: str) -> float:
    value = float(text)
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be at least 1 second, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the epilog) instead of exiting."""
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if args.command not in ("local", "calibrate", "cost", "plan", "model") and extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
    except SystemExit as exc:  # --help, --version and usage errors: argparse exits; we return
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "local":
            return _local(extras)
        if args.command == "calibrate":
            return _calibrate(extras)
        if args.command == "model":
            return _model(extras)
        if args.command in ("cost", "plan"):
            from twopass.tools import capacity_cli  # standard library only, like this module

            return (capacity_cli.cost_main if args.command == "cost" else capacity_cli.plan_main)(extras)
        if args.command == "predict":
            return _predict(args)
        if args.command == "job":
            return _job(args)
        if args.command in ("cancel", "retry"):
            return _control(args)
        if args.command == "jobs":
            return _jobs(args)
        if args.command == "redrive":
            return _redrive(args)
        return _health(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


class _CliClient(Client):
    # Error messages name the CLI's options (--url, --api-key) rather than the SDK's arguments.
    _hint_style = hints.CLI


class _CliAsyncClient(AsyncClient):
    _hint_style = hints.CLI


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "base_url": getattr(args, "url", None),
        "api_key": getattr(args, "api_key", None),
        "retries": getattr(args, "retries", 3),
        "timeout": getattr(args, "http_timeout", 30.0),
    }


def _error(message: str) -> None:
    print(f"twopass: error: {message}", file=sys.stderr)


def _exit_code_for(exc: Exception) -> int:
    if isinstance(exc, AuthenticationError):
        return EXIT_AUTH
    # Rate limiting that outlasts the retries is the service being unavailable to this caller; a URL
    # where no twopass API answers is a service this caller cannot reach.
    if isinstance(exc, TransportError | ServerError | RateLimitedError | NotTwopassError):
        return EXIT_UNAVAILABLE
    if isinstance(exc, WaitTimeoutError):
        return EXIT_TIMEOUT
    return EXIT_FAILED


# -- twopass local ------------------------------------------------------------------------------


#: What the local stack imports in its children or deep in start-up; checked first so a client-only
#: install gets one clear sentence rather than a traceback half-way through starting.
LOCAL_NEEDS: Final = ("boto3", "moto", "samtranslator", "uvicorn", "fastapi", "onnxruntime", "numpy", "PIL")


def _local(argv: list[str]) -> int:
    missing = [name for name in LOCAL_NEEDS if importlib.util.find_spec(name) is None]
    if missing and not {"-h", "--help"} & set(argv):
        _error(
            f"`twopass local` needs the server packages ({', '.join(missing)} missing): in a clone of the "
            "repository, `make run` installs them into .venv, or pip install -e '.[local]'"
        )
        return EXIT_USAGE
    from twopass.local.main import main as local_main

    return local_main(argv)


# -- twopass calibrate --------------------------------------------------------------------------


#: What calibration runs: both models on the images, with the service's own decoding.
CALIBRATE_NEEDS: Final = ("onnxruntime", "numpy", "PIL")


def _calibrate(argv: list[str]) -> int:
    missing = [name for name in CALIBRATE_NEEDS if importlib.util.find_spec(name) is None]
    if missing and not {"-h", "--help"} & set(argv):
        _error(
            f"`twopass calibrate` needs the server packages ({', '.join(missing)} missing): in a clone of the "
            "repository, pip install -e '.[serve]'"
        )
        return EXIT_USAGE
    from twopass.tools.calibrate import main as calibrate_main

    return calibrate_main(argv)


def _model(argv: list[str]) -> int:
    missing = [name for name in CALIBRATE_NEEDS if importlib.util.find_spec(name) is None]
    if missing and not {"-h", "--help"} & set(argv):
        _error(f"`twopass model` needs the server packages ({', '.join(missing)} missing): pip install -e '.[serve]'")
        return EXIT_USAGE
    from twopass.models.cli import main as model_main

    return model_main(argv)


# -- twopass redrive ----------------------------------------------------------------------------


def _redrive(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("boto3") is None:
        _error("`twopass redrive` needs boto3: in a clone of the repository, pip install -e '.[serve]'")
        return EXIT_USAGE
    import os

    from twopass.exceptions import DependencyError
    from twopass.jobs.dynamodb import DynamoJobStore
    from twopass.tools.redrive import dead_letter_queue_url, redrive

    queue_url = args.queue_url or os.environ.get("TWOPASS_QUEUE_URL")
    table = args.table or os.environ.get("TWOPASS_TABLE_NAME")
    if not queue_url or not table:
        _error("give --queue-url and --table (or set TWOPASS_QUEUE_URL and TWOPASS_TABLE_NAME)")
        return EXIT_USAGE
    try:
        dlq_url = dead_letter_queue_url(queue_url)
        if dlq_url is None:
            _error(f"{queue_url} has no redrive policy, so no dead-letter queue")
            return EXIT_USAGE
        report = redrive(dlq_url, queue_url, DynamoJobStore(table), max_messages=args.max)
    except DependencyError as exc:
        _error(str(exc))
        return EXIT_UNAVAILABLE
    print(
        f"moved {report.moved} message(s) back ({report.reopened} failed job(s) reopened); "
        f"dropped {report.dropped_done} already succeeded and {report.dropped_stale} of a run since retried; "
        f"left {report.unreadable} unreadable in the DLQ"
    )
    return EXIT_OK


# -- twopass health -----------------------------------------------------------------------------


def _health(args: argparse.Namespace) -> int:
    try:
        with _CliClient(**_client_options(args)) as client:
            health = client.health_all() if args.all else client.health()
    except ClientError as exc:
        _error(str(exc))
        return _exit_code_for(exc)
    if args.json:
        print(json.dumps(dict(health.raw), indent=2))
    else:
        print(_format_health(health))
    return EXIT_OK if health.ok else EXIT_UNAVAILABLE


def _format_health(health: Health) -> str:
    lines = [health.status]
    for name, check in health.backends.items():
        if isinstance(check, dict):
            # Scalars that say something: nested detail (per-worker stats) is what --json is for.
            shown = [f"{k}={v}" for k, v in check.items() if v is not None and not isinstance(v, dict | list)]
            extra = ", ".join(item for item in shown if not item.startswith("status="))
            lines.append(f"  {name:<12} {check.get('status', '?')}" + (f"  ({extra})" if extra else ""))
        else:
            lines.append(f"  {name:<12} {check}")
    return "\n".join(lines)


# -- twopass job --------------------------------------------------------------------------------


def _job(args: argparse.Namespace) -> int:
    result: JobResult | None = None
    code = EXIT_OK
    try:
        with _CliClient(**_client_options(args)) as client:
            if args.wait:
                result = client.wait(args.job_id, timeout=args.timeout, raise_on_failure=False)
            else:
                result = client.job(args.job_id)
    except WaitTimeoutError as exc:
        _error(str(exc))
        result, code = exc.last, EXIT_TIMEOUT
    except NotFoundError as exc:
        _error(exc.detail)
        return EXIT_FAILED
    except ClientError as exc:
        _error(str(exc))
        return _exit_code_for(exc)
    if result is None:
        return code
    if args.json:
        print(json.dumps(dict(result.raw), indent=2))
    else:
        print(_format_job(result))
    if result.done and not result.succeeded:
        code = EXIT_FAILED
    return code


def _format_job(result: JobResult) -> str:
    lines = [f"job       {result.job_id}", f"status    {result.status}  (attempts {result.attempts})"]
    if result.slow is not None:
        lines.append(f"slow      {_label(result.slow)}  [{result.slow.model}]")
        lines.append("top-k     " + ", ".join(f"{s.label} {s.probability:.2f}" for s in result.slow.top_k))
    if result.error:
        lines.append(f"error     {result.error}")
    if result.priority != "normal":
        lines.append(f"priority  {result.priority}")
    for name in ("created_at", "started_at", "finished_at", "deadline_at"):
        when = getattr(result, name)
        if when is not None:
            lines.append(f"{name.removesuffix('_at'):<9} {when.isoformat(timespec='milliseconds')}")
    for earlier in result.history:
        why = f": {earlier.error}" if earlier.error else ""
        lines.append(f"earlier   {earlier.status} after {earlier.attempts} attempt(s){why}")
    return "\n".join(lines)


# -- twopass cancel / retry / jobs --------------------------------------------------------------


def _control(args: argparse.Namespace) -> int:
    """``twopass cancel`` and ``twopass retry``: one line per id, every id tried, the worst exit code."""
    codes = {EXIT_OK}
    with _CliClient(**_client_options(args)) as client:
        act = client.cancel if args.command == "cancel" else client.retry
        for job_id in args.job_ids:
            try:
                result = act(job_id)
            except NotFoundError as exc:
                _error(f"{job_id}: {exc.detail}")
                codes.add(EXIT_FAILED)
                continue
            except ClientError as exc:
                _error(f"{job_id}: {exc.detail if isinstance(exc, BadRequestError) else exc}")
                codes.add(_exit_code_for(exc))
                if _exit_code_for(exc) in (EXIT_AUTH, EXIT_UNAVAILABLE):
                    break  # the same for every id: say it once
                continue
            if args.json:
                print(json.dumps(dict(result.raw)), flush=True)
            else:
                print(f"{result.job_id}  {result.status}", flush=True)
    return next((code for code in _PRIORITY if code in codes), EXIT_OK)


def _jobs(args: argparse.Namespace) -> int:
    shown: list[JobResult] = []
    more = False
    limit = None if args.all else args.limit
    try:
        with _CliClient(**_client_options(args)) as client:
            page_size = 100 if limit is None else min(100, limit)
            for page in client.jobs(args.status, limit=page_size):
                for result in page:
                    if limit is not None and len(shown) == limit:
                        more = True
                        break
                    shown.append(result)
                    if args.json:
                        print(json.dumps(dict(result.raw)), flush=True)
                if more or (limit is not None and len(shown) == limit and page.next_cursor is not None):
                    more = True
                    break
    except ClientError as exc:
        _error(str(exc))
        return _exit_code_for(exc)
    if not args.json:
        print(_jobs_table(shown))
    which = f"{args.status} " if args.status else ""
    tail = " (there are more: --limit N or --all)" if more else ""
    print(f"{len(shown)} {which}job{'s' if len(shown) != 1 else ''}{tail}", file=sys.stderr)
    return EXIT_OK


def _jobs_table(results: list[JobResult]) -> str:
    header = ["JOB", "STATUS", "PRIORITY", "CREATED", "SLOW"]
    body = []
    for r in results:
        created = r.created_at.isoformat(timespec="seconds") if r.created_at else ""
        outcome = _label(r.slow) if r.slow else (r.error or "")
        body.append([r.job_id, str(r.status), r.priority, created, outcome])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in [header, *body]
    )


def _label(result: ModelResult | None) -> str:
    if result is None:
        return ""
    prob = result.probability
    return f"{result.label} ({prob:.2f})" if prob is not None else result.label


# -- twopass predict ----------------------------------------------------------------------------


@dataclass
class _Row:
    """One file's journey: what the fast model said, the job's end, or what went wrong."""

    file: str
    status: str = "pending"
    prediction: Prediction | None = None
    result: JobResult | None = None
    error: str | None = None
    code: int = EXIT_OK

    @property
    def server_problem(self) -> bool:
        """Whether the error is about the server (the key, the URL, an outage) rather than this file."""
        return self.code in (EXIT_AUTH, EXIT_UNAVAILABLE) and self.status != "skipped"

    def to_json(self) -> dict[str, Any]:
        def model(m: ModelResult | None) -> dict[str, Any] | None:
            if m is None:
                return None
            return {"model": m.model, "label": m.label, "probability": m.probability}

        return {
            "file": self.file,
            "status": self.status,
            "job_id": self.prediction.job_id if self.prediction else None,
            "fast": model(self.prediction.fast if self.prediction else None),
            "slow": model(self.result.slow if self.result else None),
            "error": self.error,
        }


def collect_images(paths: Iterable[Path]) -> list[Path]:
    """Files as given, plus the image files under each folder (recursively, sorted, no dot-files)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)  # named explicitly: sent whatever its suffix, the server decides
        else:
            raise FileNotFoundError(str(path))
    return found


def _predict(args: argparse.Namespace) -> int:
    try:
        files = collect_images(args.paths)
    except FileNotFoundError as exc:
        _error(f"no such file or folder: {exc}")
        return EXIT_USAGE
    if not files:
        _error("no image files found (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
        return EXIT_USAGE
    show = args.progress if args.progress is not None else (sys.stderr.isatty() and len(files) > 1)
    progress = _Progress(len(files), sys.stderr, enabled=show, waiting=args.wait)
    rows = asyncio.run(_predict_all(files, args, progress))
    progress.close()
    if not args.json:
        print(_table(rows, args.wait), flush=True)
    # The server's problem, not a file's: said once on stderr, however many files ran into it.
    for message in dict.fromkeys(row.error for row in rows if row.error and row.server_problem):
        _error(message)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"{len(rows)} file{'s' if len(rows) != 1 else ''}: {summary}", file=sys.stderr)
    codes = {row.code for row in rows}
    return next((code for code in _PRIORITY if code in codes), EXIT_OK)


async def _predict_all(files: list[Path], args: argparse.Namespace, progress: _Progress) -> list[_Row]:
    async with _CliAsyncClient(**_client_options(args)) as client:
        return await _PredictRun(client, args, progress).run(files)


class _PredictRun:
    """One ``twopass predict``: files sent one by one or in batches, each row filled as it settles."""

    def __init__(self, client: _CliAsyncClient, args: argparse.Namespace, progress: _Progress) -> None:
        self.client, self.args, self.progress = client, args, progress
        self.semaphore = asyncio.Semaphore(args.concurrency)
        # Auth and reachability fail the same way for every file: after the first, stop sending.
        self.abort = asyncio.Event()
        self.deadline = time.monotonic() + args.timeout
        # Waiting wants the slow answer: an overloaded service is to refuse (and be retried), not shed it.
        self.options: dict[str, Any] = {
            "deadline_seconds": args.deadline,
            "priority": args.priority,
            "on_overload": "reject" if args.wait else None,
        }

    async def run(self, files: list[Path]) -> list[_Row]:
        rows = [_Row(str(path)) for path in files]
        if len(files) > BATCH_OVER:
            groups = range(0, len(files), BATCH_FILES)
            await asyncio.gather(*(self.batch(files[i : i + BATCH_FILES], rows[i : i + BATCH_FILES]) for i in groups))
        else:
            await asyncio.gather(
                *(
                    self.settle(row, functools.partial(self.one, path, row))
                    for path, row in zip(files, rows, strict=True)
                )
            )
        return rows

    def done(self, row: _Row) -> None:
        if row.server_problem:
            self.abort.set()
        self.progress.finished(row)
        if self.args.json:
            self.progress.print(json.dumps(row.to_json()), sys.stdout)

    def skip(self, row: _Row) -> None:
        row.status, row.code = "skipped", EXIT_UNAVAILABLE

    async def settle(self, row: _Row, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` for the row, its failure the row's error; the row is done after."""
        try:
            await work()
        except WaitTimeoutError as exc:
            row.result, row.status, row.code = exc.last, "timeout", EXIT_TIMEOUT
            row.error = str(exc)
        except (ClientError, OSError) as exc:
            row.status, row.error, row.code = "error", str(exc), _exit_code_for(exc)
        finally:
            self.done(row)

    async def predicted(self, row: _Row, prediction: Prediction) -> None:
        row.prediction, row.status = prediction, str(prediction.status)
        self.progress.predicted()
        if self.args.wait:
            remaining = max(0.0, self.deadline - time.monotonic())
            row.result = await self.client.wait(prediction, timeout=remaining, raise_on_failure=False)
            row.status = str(row.result.status)
            if not row.result.succeeded:
                row.error, row.code = row.result.error or row.status, EXIT_FAILED

    async def one(self, path: Path, row: _Row) -> None:
        if self.abort.is_set():
            return self.skip(row)
        async with self.semaphore:
            if self.abort.is_set():
                return self.skip(row)
            prediction = await self.client.predict(path, **self.options)
        await self.predicted(row, prediction)

    async def answered(self, row: _Row, answer: Prediction | BatchItemError) -> None:
        if isinstance(answer, BatchItemError):  # this file's refusal, as POST /predict's would be
            row.status, row.error, row.code = "error", str(answer), EXIT_FAILED
            return
        await self.predicted(row, answer)

    async def batch(self, paths: list[Path], rows: list[_Row]) -> None:
        answers: list[Prediction | BatchItemError] | None = None
        error: ClientError | OSError | None = None
        if not self.abort.is_set():
            async with self.semaphore:
                if not self.abort.is_set():
                    try:
                        answers = await self.client.predict_many(paths, **self.options)
                    except (ClientError, OSError) as exc:  # the whole call failed: each of its files says why
                        error = exc
        if answers is None:
            for row in rows:
                if error is None:
                    self.skip(row)
                else:
                    row.status, row.error, row.code = "error", str(error), _exit_code_for(error)
                self.done(row)
            return
        await asyncio.gather(
            *(self.settle(row, functools.partial(self.answered, row, a)) for row, a in zip(rows, answers, strict=True))
        )


def _table(rows: list[_Row], wait: bool) -> str:
    header = ["FILE", "FAST", "JOB", *(["SLOW"] if wait else []), "STATUS"]
    body: list[list[str]] = []
    for row in rows:
        # A server problem is printed once, below the table, rather than on every row it stopped.
        status = f"{row.status}: {row.error}" if row.error and not row.server_problem else row.status
        cells = [
            row.file,
            _label(row.prediction.fast if row.prediction else None),
            (row.prediction.job_id or "") if row.prediction else "",
            *([_label(row.result.slow if row.result else None)] if wait else []),
            status,
        ]
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header) - 1)]
    lines = []
    for cells in [header, *body]:
        lines.append("  ".join([*(c.ljust(w) for c, w in zip(cells, widths, strict=False)), cells[-1]]).rstrip())
    return "\n".join(lines)


class _Progress:
    """A one-line bar on stderr, redrawn in place; stays out of the way of stdout."""

    def __init__(self, total: int, stream: IO[str], *, enabled: bool, waiting: bool) -> None:
        self.total, self.stream, self.enabled, self.waiting = total, stream, enabled, waiting
        self.sent = self.done = self.problems = 0
        self.started = time.monotonic()
        self._drawn = False

    def predicted(self) -> None:
        self.sent += 1
        self._draw()

    def finished(self, row: _Row) -> None:
        self.done += 1
        if row.code != EXIT_OK:
            self.problems += 1
        self._draw()

    def print(self, line: str, stream: IO[str]) -> None:
        """Print a line to ``stream`` without tearing the bar (which is redrawn below it)."""
        self._clear()
        print(line, file=stream, flush=True)
        self._draw()

    def close(self) -> None:
        if self.enabled and self._drawn:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _clear(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _draw(self) -> None:
        if not self.enabled:
            return
        columns = shutil.get_terminal_size((80, 24)).columns
        text = f" {self.done}/{self.total}"
        if self.waiting:
            text += f"  predicted {self.sent}"
        if self.problems:
            text += f"  problems {self.problems}"
        text += f"  {time.monotonic() - self.started:.1f}s"
        width = max(10, min(40, columns - len(text) - 3))
        filled = width * self.done // max(1, self.total)
        self.stream.write(f"\r[{'#' * filled}{'-' * (width - filled)}]{text}\x1b[K")
        self.stream.flush()
        self._drawn = True


if __name__ == "__main__":
    sys.exit(main())

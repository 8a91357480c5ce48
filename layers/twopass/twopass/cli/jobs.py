"""``twopass job``, ``cancel``, ``retry`` and ``jobs``: one job, acting on jobs, or the caller's list of them."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import Final

from twopass.cli import common
from twopass.cli.common import (
    EPILOG,
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    Command,
    Subparsers,
    error,
    exit_code_for,
    label,
    runs,
    worst,
)
from twopass.cli.options import non_negative_float, positive_int
from twopass.client import BadRequestError, Client, ClientError, JobResult, NotFoundError, WaitTimeoutError

#: What ``twopass jobs --status`` accepts: every job status.
JOB_STATUSES: Final = ("queued", "running", "succeeded", "failed", "cancelled", "expired")


def register(sub: Subparsers[argparse.ArgumentParser], common_options: argparse.ArgumentParser) -> None:
    """job, cancel, retry and jobs, in the order ``twopass --help`` lists them."""
    _add_job(sub, common_options)
    _add_control(sub, common_options)
    _add_jobs(sub, common_options)


def _add_job(sub: Subparsers[argparse.ArgumentParser], common_options: argparse.ArgumentParser) -> None:
    job = sub.add_parser(
        "job",
        parents=[common_options],
        help="show a job",
        description="Show a job's status and the slow model's result.",
    )
    job.add_argument("job_id", metavar="ID")
    job.add_argument("--wait", action="store_true", help="wait until the job ended (succeeded, failed, cancelled…)")
    job.add_argument("--timeout", type=non_negative_float, default=120.0, help="with --wait: seconds (default 120)")
    job.add_argument("--json", action="store_true", help="print the server's JSON")
    runs(job, Command(show_job))


def _add_control(sub: Subparsers[argparse.ArgumentParser], common_options: argparse.ArgumentParser) -> None:
    cancel = sub.add_parser(
        "cancel",
        parents=[common_options],
        help="cancel queued or running jobs",
        description="DELETE /job/{id} for each id: a queued job is never run, a running one has its slow result "
        "discarded. A job that had already ended is reported, and the exit code is then 1.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cancel.add_argument("job_ids", nargs="+", metavar="ID")
    cancel.add_argument("--json", action="store_true", help="print each cancelled job's JSON")
    runs(cancel, Command(functools.partial(control, Client.cancel)))

    retry = sub.add_parser(
        "retry",
        parents=[common_options],
        help="run failed, expired or cancelled jobs again",
        description="POST /job/{id}/retry for each id: the job is queued again under the same id while its image "
        "is still kept (right after a cancel, it waits up to 2 min for a worker to keep the image). A job in another "
        "state, or whose image is gone or was replaced, is reported, and the exit code is then 1.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    retry.add_argument("job_ids", nargs="+", metavar="ID")
    retry.add_argument("--json", action="store_true", help="print each queued job's JSON")
    runs(retry, Command(functools.partial(control, Client.retry)))


def _add_jobs(sub: Subparsers[argparse.ArgumentParser], common_options: argparse.ArgumentParser) -> None:
    jobs = sub.add_parser(
        "jobs",
        parents=[common_options],
        help="list your jobs, newest first",
        description="GET /jobs: the jobs of your API key, newest first, page after page.",
    )
    jobs.add_argument("--status", choices=JOB_STATUSES, default=None, help="only jobs in this status")
    jobs.add_argument("--limit", type=positive_int, default=20, help="show at most this many jobs (default 20)")
    jobs.add_argument("--all", action="store_true", help="show every job (no --limit)")
    jobs.add_argument("--json", action="store_true", help="one JSON object per job on stdout")
    runs(jobs, Command(list_jobs))


# -- twopass job --------------------------------------------------------------------------------


def show_job(args: argparse.Namespace) -> int:
    result: JobResult | None = None
    code = EXIT_OK
    try:
        # Looked up on the module when called, so a test can give the client another transport.
        with common.CliClient(**common.client_options(args)) as client:
            if args.wait:
                result = client.wait(args.job_id, timeout=args.timeout, raise_on_failure=False)
            else:
                result = client.job(args.job_id)
    except WaitTimeoutError as exc:
        error(str(exc))
        result, code = exc.last, EXIT_TIMEOUT
    except NotFoundError as exc:
        error(exc.detail)
        return EXIT_FAILED
    except ClientError as exc:
        error(str(exc))
        return exit_code_for(exc)
    if result is None:
        return code
    if args.json:
        print(json.dumps(dict(result.raw), indent=2))
    else:
        print(format_job(result))
    if result.done and not result.succeeded:
        code = EXIT_FAILED
    return code


def format_job(result: JobResult) -> str:
    lines = [f"job       {result.job_id}", f"status    {result.status}  (attempts {result.attempts})"]
    if result.slow is not None:
        lines.append(f"slow      {label(result.slow)}  [{result.slow.model}]")
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


# -- twopass cancel / retry ---------------------------------------------------------------------


def control(act: Callable[[Client, str], JobResult], args: argparse.Namespace) -> int:
    """``twopass cancel`` and ``twopass retry`` (``act``): one line per id, every id tried, the worst exit code."""
    codes = {EXIT_OK}
    with common.CliClient(**common.client_options(args)) as client:
        for job_id in args.job_ids:
            try:
                result = act(client, job_id)
            except NotFoundError as exc:
                error(f"{job_id}: {exc.detail}")
                codes.add(EXIT_FAILED)
                continue
            except ClientError as exc:
                error(f"{job_id}: {exc.detail if isinstance(exc, BadRequestError) else exc}")
                codes.add(exit_code_for(exc))
                if exit_code_for(exc) in (EXIT_AUTH, EXIT_UNAVAILABLE):
                    break  # the same for every id: say it once
                continue
            if args.json:
                print(json.dumps(dict(result.raw)), flush=True)
            else:
                print(f"{result.job_id}  {result.status}", flush=True)
    return worst(codes)


# -- twopass jobs -------------------------------------------------------------------------------


def list_jobs(args: argparse.Namespace) -> int:
    shown: list[JobResult] = []
    more = False
    limit = None if args.all else args.limit
    try:
        with common.CliClient(**common.client_options(args)) as client:
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
        error(str(exc))
        return exit_code_for(exc)
    if not args.json:
        print(jobs_table(shown))
    which = f"{args.status} " if args.status else ""
    tail = " (there are more: --limit N or --all)" if more else ""
    print(f"{len(shown)} {which}job{'s' if len(shown) != 1 else ''}{tail}", file=sys.stderr)
    return EXIT_OK


def jobs_table(results: list[JobResult]) -> str:
    header = ["JOB", "STATUS", "PRIORITY", "CREATED", "SLOW"]
    body = []
    for r in results:
        created = r.created_at.isoformat(timespec="seconds") if r.created_at else ""
        outcome = label(r.slow) if r.slow else (r.error or "")
        body.append([r.job_id, str(r.status), r.priority, created, outcome])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in [header, *body]
    )

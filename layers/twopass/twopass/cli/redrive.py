"""``twopass redrive``: move dead-lettered jobs back to the job queue (operators; AWS credentials, boto3).

The work is :func:`twopass.tools.redrive.redrive`'s; it and the job table's client are imported only
when the command runs, so a client-only install still starts ``twopass`` (and prints this command's help).
"""

from __future__ import annotations

import argparse
import os

from twopass.cli.common import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, Command, Subparsers, error, missing, runs
from twopass.cli.options import positive_int


def register(sub: Subparsers[argparse.ArgumentParser], common_options: argparse.ArgumentParser) -> None:
    redrive = sub.add_parser(
        "redrive",
        help="move dead-lettered jobs back to the job queue (operators; needs AWS credentials and boto3)",
        description="Receive every message in the dead-letter queue, reopen its failed job, send it back to the "
        "job queue and delete it from the DLQ. Jobs that succeeded meanwhile are dropped, never rerun. "
        "The DLQ is found from the job queue's redrive policy.",
    )
    redrive.add_argument("--queue-url", default=None, help="job queue URL (default: TWOPASS_QUEUE_URL)")
    redrive.add_argument("--table", default=None, help="job table name (default: TWOPASS_TABLE_NAME)")
    redrive.add_argument("--max", type=positive_int, default=None, help="move at most this many messages")
    runs(redrive, Command(run))


def run(args: argparse.Namespace) -> int:
    if missing(("boto3",)):
        error("`twopass redrive` needs boto3: in a clone of the repository, pip install -e '.[serve]'")
        return EXIT_USAGE
    from twopass.exceptions import DependencyError
    from twopass.jobs.dynamodb import DynamoJobStore
    from twopass.tools.redrive import dead_letter_queue_url, redrive

    queue_url = args.queue_url or os.environ.get("TWOPASS_QUEUE_URL")
    table = args.table or os.environ.get("TWOPASS_TABLE_NAME")
    if not queue_url or not table:
        error("give --queue-url and --table (or set TWOPASS_QUEUE_URL and TWOPASS_TABLE_NAME)")
        return EXIT_USAGE
    try:
        dlq_url = dead_letter_queue_url(queue_url)
        if dlq_url is None:
            error(f"{queue_url} has no redrive policy, so no dead-letter queue")
            return EXIT_USAGE
        report = redrive(dlq_url, queue_url, DynamoJobStore(table), max_messages=args.max)
    except DependencyError as exc:
        error(str(exc))
        return EXIT_UNAVAILABLE
    print(
        f"moved {report.moved} message(s) back ({report.reopened} failed job(s) reopened); "
        f"dropped {report.dropped_done} already succeeded and {report.dropped_stale} of a run since retried; "
        f"left {report.unreadable} unreadable in the DLQ"
    )
    return EXIT_OK

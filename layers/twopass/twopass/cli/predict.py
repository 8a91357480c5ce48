"""``twopass predict``: send image files, print the fast label as each answers (and, with ``--wait``,
the slow one), with a progress bar on stderr and a table (or JSON lines) on stdout."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from twopass.cli import common
from twopass.cli.common import (
    EPILOG,
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Command,
    Subparsers,
    error,
    exit_code_for,
    label,
    runs,
    worst,
)
from twopass.cli.options import deadline, non_negative_float, positive_int
from twopass.client import BatchItemError, ClientError, JobResult, ModelResult, Prediction, WaitTimeoutError

#: ``twopass predict`` sends more files than this through ``POST /batches``, up to BATCH_FILES a call.
BATCH_OVER: Final = 8
BATCH_FILES: Final = 100

IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def register(sub: Subparsers[argparse.ArgumentParser], common_options: argparse.ArgumentParser) -> None:
    predict = sub.add_parser(
        "predict",
        parents=[common_options],
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
        type=non_negative_float,
        default=120.0,
        help="with --wait: seconds to wait for slow results, counted from the start (default 120)",
    )
    predict.add_argument(
        "--concurrency",
        type=positive_int,
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
        type=deadline,
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
    runs(predict, Command(run))


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


def run(args: argparse.Namespace) -> int:
    try:
        files = collect_images(args.paths)
    except FileNotFoundError as exc:
        error(f"no such file or folder: {exc}")
        return EXIT_USAGE
    if not files:
        error("no image files found (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
        return EXIT_USAGE
    show = args.progress if args.progress is not None else (sys.stderr.isatty() and len(files) > 1)
    progress = Progress(len(files), sys.stderr, enabled=show, waiting=args.wait)
    rows = asyncio.run(_predict_all(files, args, progress))
    progress.close()
    if not args.json:
        print(table(rows, args.wait), flush=True)
    # The server's problem, not a file's: said once on stderr, however many files ran into it.
    for message in dict.fromkeys(row.error for row in rows if row.error and row.server_problem):
        error(message)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"{len(rows)} file{'s' if len(rows) != 1 else ''}: {summary}", file=sys.stderr)
    return worst(row.code for row in rows)


async def _predict_all(files: list[Path], args: argparse.Namespace, progress: Progress) -> list[Row]:
    # Looked up on the module when called, so a test can give the client another transport.
    async with common.CliAsyncClient(**common.client_options(args)) as client:
        return await PredictRun(client, args, progress).run(files)


@dataclass
class Row:
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


class PredictRun:
    """One ``twopass predict``: files sent one by one or in batches, each row filled as it settles."""

    def __init__(self, client: common.CliAsyncClient, args: argparse.Namespace, progress: Progress) -> None:
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

    async def run(self, files: list[Path]) -> list[Row]:
        rows = [Row(str(path)) for path in files]
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

    def done(self, row: Row) -> None:
        if row.server_problem:
            self.abort.set()
        self.progress.finished(row)
        if self.args.json:
            self.progress.print(json.dumps(row.to_json()), sys.stdout)

    def skip(self, row: Row) -> None:
        row.status, row.code = "skipped", EXIT_UNAVAILABLE

    async def settle(self, row: Row, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` for the row, its failure the row's error; the row is done after."""
        try:
            await work()
        except WaitTimeoutError as exc:
            row.result, row.status, row.code = exc.last, "timeout", EXIT_TIMEOUT
            row.error = str(exc)
        except (ClientError, OSError) as exc:
            row.status, row.error, row.code = "error", str(exc), exit_code_for(exc)
        finally:
            self.done(row)

    async def predicted(self, row: Row, prediction: Prediction) -> None:
        row.prediction, row.status = prediction, str(prediction.status)
        self.progress.predicted()
        if self.args.wait:
            remaining = max(0.0, self.deadline - time.monotonic())
            row.result = await self.client.wait(prediction, timeout=remaining, raise_on_failure=False)
            row.status = str(row.result.status)
            if not row.result.succeeded:
                row.error, row.code = row.result.error or row.status, EXIT_FAILED

    async def one(self, path: Path, row: Row) -> None:
        if self.abort.is_set():
            return self.skip(row)
        async with self.semaphore:
            if self.abort.is_set():
                return self.skip(row)
            prediction = await self.client.predict(path, **self.options)
        await self.predicted(row, prediction)

    async def answered(self, row: Row, answer: Prediction | BatchItemError) -> None:
        if isinstance(answer, BatchItemError):  # this file's refusal, as POST /predict's would be
            row.status, row.error, row.code = "error", str(answer), EXIT_FAILED
            return
        await self.predicted(row, answer)

    async def batch(self, paths: list[Path], rows: list[Row]) -> None:
        answers: list[Prediction | BatchItemError] | None = None
        failure: ClientError | OSError | None = None
        if not self.abort.is_set():
            async with self.semaphore:
                if not self.abort.is_set():
                    try:
                        answers = await self.client.predict_many(paths, **self.options)
                    except (ClientError, OSError) as exc:  # the whole call failed: each of its files says why
                        failure = exc
        if answers is None:
            for row in rows:
                if failure is None:
                    self.skip(row)
                else:
                    row.status, row.error, row.code = "error", str(failure), exit_code_for(failure)
                self.done(row)
            return
        await asyncio.gather(
            *(self.settle(row, functools.partial(self.answered, row, a)) for row, a in zip(rows, answers, strict=True))
        )


def table(rows: list[Row], wait: bool) -> str:
    header = ["FILE", "FAST", "JOB", *(["SLOW"] if wait else []), "STATUS"]
    body: list[list[str]] = []
    for row in rows:
        # A server problem is printed once, below the table, rather than on every row it stopped.
        status = f"{row.status}: {row.error}" if row.error and not row.server_problem else row.status
        cells = [
            row.file,
            label(row.prediction.fast if row.prediction else None),
            (row.prediction.job_id or "") if row.prediction else "",
            *([label(row.result.slow if row.result else None)] if wait else []),
            status,
        ]
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header) - 1)]
    lines = []
    for cells in [header, *body]:
        lines.append("  ".join([*(c.ljust(w) for c, w in zip(cells, widths, strict=False)), cells[-1]]).rstrip())
    return "\n".join(lines)


class Progress:
    """A one-line bar on stderr, redrawn in place; stays out of the way of stdout."""

    def __init__(self, total: int, stream: IO[str], *, enabled: bool, waiting: bool) -> None:
        self.total, self.stream, self.enabled, self.waiting = total, stream, enabled, waiting
        self.sent = self.done = self.problems = 0
        self.started = time.monotonic()
        self._drawn = False

    def predicted(self) -> None:
        self.sent += 1
        self._draw()

    def finished(self, row: Row) -> None:
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

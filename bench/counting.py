"""Counting the AWS calls the code really makes, by service and operation, from botocore's events.

Every call a boto3 client makes emits ``before-parameter-build.<service>.<operation>`` once, with
the caller's parameters (botocore's own retries of the call do not emit it again: the counts are
calls, and a retried one is billed once more on AWS), and ``after-call`` with the parsed answer.
:class:`CallCounter` listens to both on the clients made by :func:`twopass.aws.client` (or on
clients given to it), so the figures are measured, never read off the code:

    with CallCounter.everywhere() as counter:
        ...  # run the API and the worker
    counter.snapshot()  # {("SQS", "SendMessage"): 120, ...}

It also keeps what the cost model needs besides the counts: the messages a receive returned, the
entries of a batch call, the bytes of a message sent.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from twopass import aws

#: (service id as botocore names it, e.g. ``"DynamoDB"``, operation name, e.g. ``"PutItem"``).
Call = tuple[str, str]
#: Sorts a call into a group of the caller's choosing from ``(service, operation, parameters)``.
Tagger = Callable[[str, str, Mapping[str, Any]], str]

#: Operations that write to DynamoDB (billed in write request units) and that read from it.
DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"})
DYNAMODB_READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})


@dataclass
class CallCounter:
    """AWS calls by ``(service, operation)``; thread-safe (the worker calls from many threads)."""

    calls: Counter[Call] = field(default_factory=Counter)
    #: Messages that ``ReceiveMessage`` calls brought back.
    received: int = 0
    #: ``ReceiveMessage`` calls that brought nothing (idle long polls).
    empty_receives: int = 0
    #: Entries of batch calls (``DeleteMessageBatch``, ``ChangeMessageVisibilityBatch``, …) by operation.
    entries: Counter[Call] = field(default_factory=Counter)
    #: Bytes of message bodies sent (SQS bills each 64 KiB of a request as one request).
    message_bytes: int = 0
    #: When set, every call is also counted under its tag in :attr:`tagged` (e.g. per-job work
    #: apart from periodic chores), and empty receives in :attr:`empty_by_tag`.
    tagger: Tagger | None = None
    tagged: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    empty_by_tag: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _detach: list[Any] = field(default_factory=list, repr=False)

    # -- hooks -----------------------------------------------------------------------------------

    def _before_call(
        self, model: Any, params: Mapping[str, Any], context: dict[str, Any] | None = None, **_: Any
    ) -> None:
        key = _key(model)
        entries = params.get("Entries") or params.get("TransactItems") or params.get("RequestItems")
        tag = None if self.tagger is None else self.tagger(*key, params)
        if tag is not None and context is not None:
            context["twopass_call_tag"] = tag  # the same dict reaches after-call
        with self._lock:
            self.calls[key] += 1
            if tag is not None:
                self.tagged[(tag, *key)] += 1
            if isinstance(entries, list | dict):
                self.entries[key] += len(entries)
            body = params.get("MessageBody")
            if isinstance(body, str):
                self.message_bytes += len(body.encode())

    def _after_call(
        self, model: Any, parsed: Mapping[str, Any], context: Mapping[str, Any] | None = None, **_: Any
    ) -> None:
        if model.name != "ReceiveMessage":
            return
        got = len(parsed.get("Messages") or [])
        tag = (context or {}).get("twopass_call_tag")
        with self._lock:
            self.received += got
            self.empty_receives += int(got == 0)
            if tag is not None and not got:
                self.empty_by_tag[str(tag)] += 1

    # -- attaching -------------------------------------------------------------------------------

    def attach(self, *clients: Any) -> CallCounter:
        """Count the calls of these boto3 clients (until :meth:`detach`)."""
        for made in clients:
            events = made.meta.events
            for event, handler in self._handlers():
                events.register(event, handler)
                self._detach.append(lambda e=events, ev=event, h=handler: e.unregister(ev, h))
        return self

    def install(self) -> CallCounter:
        """Count the calls of every client :func:`twopass.aws.client` made or will make (until :meth:`detach`)."""
        for event, handler in self._handlers():
            self._detach.append(aws.on_event(event, handler))
        return self

    def detach(self) -> None:
        while self._detach:
            self._detach.pop()()

    def _handlers(self) -> list[tuple[str, Any]]:
        return [("before-parameter-build", self._before_call), ("after-call", self._after_call)]

    @classmethod
    @contextmanager
    def everywhere(cls) -> Iterator[CallCounter]:
        """A counter installed on every twopass client for the duration of the block."""
        counter = cls().install()
        try:
            yield counter
        finally:
            counter.detach()

    # -- reading ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[Call, int]:
        with self._lock:
            return dict(self.calls)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.entries.clear()
            self.tagged.clear()
            self.empty_by_tag.clear()
            self.received = self.empty_receives = self.message_bytes = 0

    def total(self, service: str | None = None, operations: frozenset[str] | None = None) -> int:
        """Calls to ``service`` (all services when ``None``), only ``operations`` when given."""
        with self._lock:
            return sum(
                n
                for (svc, op), n in self.calls.items()
                if (service is None or svc == service) and (operations is None or op in operations)
            )

    def by_tag(self, tag: str) -> dict[Call, int]:
        """Calls the tagger put under ``tag``."""
        with self._lock:
            return {(svc, op): n for (t, svc, op), n in self.tagged.items() if t == tag}

    def per_job(self, jobs: int) -> dict[str, float]:
        """``{"SQS SendMessage": calls / jobs, …}``, sorted by service then operation."""
        if jobs <= 0:
            raise ValueError("jobs must be at least 1")
        with self._lock:
            return {f"{svc} {op}": n / jobs for (svc, op), n in sorted(self.calls.items())}


def _key(model: Any) -> Call:
    return str(model.service_model.service_id), str(model.name)


def diff(after: Mapping[Call, int], before: Mapping[Call, int]) -> dict[Call, int]:
    """Calls made between two :meth:`CallCounter.snapshot` readings (zeros left out)."""
    out = {key: n - before.get(key, 0) for key, n in after.items()}
    return {key: n for key, n in out.items() if n}

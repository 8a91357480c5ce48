"""Delivers completion callbacks in the background: bounded retries, never blocking or failing a job.

A receiver is somebody else's server, and may be slow, broken or hostile. Whatever it does, it
cannot hurt the worker or anybody else's callbacks:

- **Memory**: of an answer only the status line and headers are read, plus a body of at most
  :data:`MAX_BODY_BYTES` when it announces one that small (so the connection can be reused); at most
  :data:`MAX_RESPONSE_BYTES` in all. Anything else is left unread and the connection closed.
- **Time**: each try has one deadline, ``timeout`` seconds from the lookup to the last byte read
  (:class:`~twopass.notify.transport.PinnedTransport`'s budget), however the receiver paces its bytes.
- **Isolation**: tries run on up to ``threads`` threads, and one destination (scheme, host, port)
  has at most ``per_destination`` of them at once. Ready deliveries are taken round-robin across
  destinations; a delivery waiting out its backoff holds no thread. A receiver that hangs every
  connection holds ``per_destination`` threads, and only its own callbacks queue behind them.
- **Shutdown**: :meth:`CallbackSender.close` gives queued deliveries their try within its timeout;
  what is left then is counted, logged (one line per job and a total) and reported through
  ``on_dropped``, never silently dropped.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from twopass.backoff import Backoff
from twopass.exceptions import TwopassError
from twopass.notify.guard import CallbackResolutionError, CallbackURLError, Resolver, check_url
from twopass.notify.signing import SIGNATURE_HEADER, sign
from twopass.notify.transport import PinnedTransport
from twopass.observability.logs import job_extra

logger = logging.getLogger(__name__)

#: Statuses worth another try: the receiver is overloaded or restarting.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: The most of one answer ever read: status line, headers and a small body.
MAX_RESPONSE_BYTES = 16 * 1024
#: A 2xx answer's body is read only when it announces at most this many bytes (then the connection
#: can serve the next callback); otherwise it is not read at all.
MAX_BODY_BYTES = 4 * 1024


class _RefusedError(TwopassError):
    """The receiver answered, and not with a 2xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _RetryableError(_RefusedError):
    """An answer worth another try (429, 503, …)."""


def destination(url: str) -> str:
    """What the per-destination limit counts by: ``scheme://host:port`` (the URL itself if malformed)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or ''}:{parts.port or ''}"
    except ValueError:
        return url


@dataclass(eq=False)
class _Delivery:
    url: str
    body: bytes
    job_id: str
    destination: str
    backoff: Backoff
    tries: int = 0
    last_error: str = ""
    #: Counted as not delivered at shutdown while its try was still running: its end reports nothing.
    dropped: bool = False
    seq: int = 0  # order among the ready and the waiting


class _Schedule:
    """Which delivery is tried next: the ready ones per destination, destinations in round-robin order;
    those waiting out a backoff, soonest first; the tries running, at most ``per_destination`` each.

    Not thread-safe: :class:`CallbackSender` calls it under its condition.
    """

    def __init__(self, per_destination: int) -> None:
        self.per_destination = per_destination
        self.ready: OrderedDict[str, deque[_Delivery]] = OrderedDict()
        #: (due, seq, delivery), soonest first.
        self.waiting: list[tuple[float, int, _Delivery]] = []
        self.active: dict[str, int] = {}  # tries running, per destination
        self.in_flight: set[_Delivery] = set()
        self._seq = itertools.count()

    def add(self, delivery: _Delivery) -> None:
        """Ready for a try, behind its destination's others."""
        delivery.seq = next(self._seq)
        self.ready.setdefault(delivery.destination, deque()).append(delivery)

    def wait(self, delivery: _Delivery, due: float) -> None:
        """Ready again at ``due`` (monotonic seconds)."""
        heapq.heappush(self.waiting, (due, delivery.seq, delivery))

    def release_due(self, now: float) -> float | None:
        """Make the waits that are over ready; when the next one is due (``None``: none waits)."""
        while self.waiting and self.waiting[0][0] <= now:
            self.add(heapq.heappop(self.waiting)[2])
        return self.waiting[0][0] if self.waiting else None

    def startable(self) -> bool:
        return any(self.active.get(d, 0) < self.per_destination for d in self.ready)

    def pick(self) -> _Delivery | None:
        """The oldest ready delivery of the first destination (round-robin) with a free slot, now in flight."""
        dest = next((d for d in self.ready if self.active.get(d, 0) < self.per_destination), None)
        if dest is None:
            return None
        ready = self.ready[dest]
        delivery = ready.popleft()
        if ready:
            self.ready.move_to_end(dest)
        else:
            del self.ready[dest]
        self.active[dest] = self.active.get(dest, 0) + 1
        self.in_flight.add(delivery)
        return delivery

    def tried(self, delivery: _Delivery) -> None:
        """A try ended: its destination's slot is free."""
        dest = delivery.destination
        self.active[dest] -= 1
        if not self.active[dest]:
            del self.active[dest]
        self.in_flight.discard(delivery)

    def take_waiting(self) -> list[_Delivery]:
        """Every delivery waiting out a backoff, no longer scheduled."""
        waiting = [entry[2] for entry in self.waiting]
        self.waiting.clear()
        return waiting

    def take_ready(self) -> list[_Delivery]:
        """Every ready delivery, no longer scheduled."""
        ready = [d for queue in self.ready.values() for d in queue]
        self.ready.clear()
        return ready


class _Poster:
    """One try of one delivery over HTTP: the URL's form checked, the body signed, the answer classed.

    Connections go only to addresses the SSRF guard checked (:class:`PinnedTransport`).
    """

    def __init__(
        self,
        secret: str,
        *,
        allow_private: bool,
        allow_http: bool,
        timeout: float,
        connections: int,
        resolver: Resolver | None,
        transport: httpx.BaseTransport | None,
    ) -> None:
        self.secret = secret
        self.allow_private = allow_private
        self.allow_http = allow_http
        # No redirects (a redirect to an internal address would walk around the guard) and no proxies
        # from the environment (a proxy would make its own DNS lookup). One connection per thread at
        # most, so a try never waits for the pool.
        self._http = httpx.Client(
            transport=transport
            or PinnedTransport(
                allow_private=allow_private,
                resolver=resolver,
                max_connections=connections,
                attempt_timeout=timeout,
                max_response_bytes=MAX_RESPONSE_BYTES,
            ),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "twopass-callback/1"},
        )

    def attempt(self, delivery: _Delivery) -> bool | None:
        """One try: ``True`` delivered, ``False`` refused for good, ``None`` worth another try."""
        delivery.tries += 1
        try:
            self._post(delivery.url, delivery.body)
            return True
        except (_RetryableError, httpx.TransportError, CallbackResolutionError) as exc:
            delivery.last_error = _describe(exc)
            return None
        except (_RefusedError, httpx.HTTPError, CallbackURLError) as exc:
            delivery.last_error = _describe(exc)
            return False
        except Exception:  # a delivery thread must survive anything one callback does
            logger.exception("callback to %s failed", delivery.url, extra=job_extra(delivery.job_id))
            delivery.last_error = "unexpected error"
            return False

    def _post(self, url: str, body: bytes) -> None:
        # Form only here: the addresses are checked by the transport, on the one lookup it connects with.
        check_url(url, allow_private=self.allow_private, allow_http=self.allow_http, resolve=False)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)}
        with self._http.stream("POST", url, content=body, headers=headers) as response:
            status = response.status_code
            if 200 <= status < 300:
                _read_small_body(response)
        # Leaving the block unread closes the connection: the rest of the answer is never read.
        if not 200 <= status < 300:
            raise (_RetryableError if status in _RETRY_STATUSES else _RefusedError)(status)

    def close(self) -> None:
        self._http.close()


class CallbackSender:
    """POSTs ``{"job_id", "status", ...}`` to each job's ``callback_url``, signed with the deployment secret.

    Each delivery gets ``attempts`` tries of at most ``timeout`` seconds each, with capped exponential
    backoff and full jitter between them. Connections go only to addresses the SSRF guard checked
    (:class:`PinnedTransport`). ``on_result(delivered)`` is called once per callback;
    ``on_dropped(count)`` when callbacks are given up at shutdown (they count in ``on_result`` too).
    Threads are daemons: a receiver that hangs never holds up the process's exit.
    """

    def __init__(
        self,
        secret: str,
        *,
        allow_private: bool = False,
        allow_http: bool = False,
        attempts: int = 5,
        timeout: float = 10.0,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        threads: int = 32,
        per_destination: int = 4,
        on_result: Callable[[bool], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        resolver: Resolver | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.secret = secret
        self.allow_private = allow_private
        self.allow_http = allow_http
        self.attempts = max(1, attempts)
        self.timeout = timeout
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.per_destination = max(1, per_destination)
        self.on_result = on_result
        self.on_dropped = on_dropped
        self._max_threads = max(1, threads)
        self._poster = _Poster(
            secret, allow_private=allow_private, allow_http=allow_http, timeout=timeout, connections=self._max_threads,
            resolver=resolver, transport=transport,
        )  # fmt: skip
        self._threads: list[threading.Thread] = []
        self._cond = threading.Condition()
        self._schedule = _Schedule(self.per_destination)
        self._pending = 0  # submitted and not finished (ready, waiting or being tried)
        self._idle = 0  # threads waiting for work
        #: Set by close(): deliveries still get their current try, but no backoff wait and no retry.
        self._closing = threading.Event()
        self._stopped = False  # close() is done: threads exit

    @property
    def pending(self) -> int:
        """Callbacks submitted and not yet delivered or given up."""
        with self._cond:
            return self._pending

    def submit(self, url: str, payload: dict[str, Any]) -> None:
        """Queue one delivery; returns at once."""
        job_id = str(payload.get("job_id", ""))
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        delivery = _Delivery(
            url, body, job_id, destination(url), Backoff(base=self.base_delay, cap=self.max_delay, jitter=True)
        )
        with self._cond:
            closed = self._closing.is_set()
            if not closed:
                self._pending += 1
                self._schedule.add(delivery)
                self._wake()
        if closed:
            logger.warning("callback not sent: the sender is closed", extra=job_extra(job_id))
            self._report(False)
            self._dropped(1)

    # -- scheduling (under self._cond) -------------------------------------------------------------

    def _wake(self) -> None:
        """Work can start: wake a thread waiting for some, or start one (on demand, up to ``threads``).

        A woken thread counts as idle until it runs; the thread that takes a delivery calls this
        again when more can start, so a wake-up that found nobody new is made up for there.
        """
        if self._idle > 0:
            self._cond.notify()
        else:
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        """Start one more thread when none waits for work."""
        if self._idle == 0 and len(self._threads) < self._max_threads:
            thread = threading.Thread(target=self._run, name=f"callback-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _take(self) -> _Delivery | None:
        """The next delivery to try, waiting for one; ``None`` once the sender is stopped."""
        while not self._stopped:
            now = time.monotonic()
            due = self._schedule.release_due(now)
            delivery = self._schedule.pick()
            if delivery is not None:
                if self._schedule.startable():
                    self._wake()
                return delivery
            self._idle += 1
            try:
                self._cond.wait(None if due is None else due - now)
            finally:
                self._idle -= 1
        return None

    def _settle(self, delivery: _Delivery, outcome: bool | None) -> bool:
        """Book a try's ``outcome`` (``None``: worth another); ``True`` when the delivery is finished."""
        self._schedule.tried(delivery)
        self._cond.notify_all()  # a slot of this destination is free
        if delivery.dropped:
            return False  # already counted and reported by close()
        if outcome is None and delivery.tries < self.attempts and not self._closing.is_set():
            self._schedule.wait(delivery, time.monotonic() + delivery.backoff.next_delay())
            self._ensure_thread()  # a thread free when it is due, not only when a busy one ends
            return False
        self._pending -= 1
        return True

    # -- delivery threads ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                delivery = self._take()
            if delivery is None:
                return
            outcome = self._poster.attempt(delivery)
            with self._cond:
                finished = self._settle(delivery, outcome)
            if finished:
                self._finish(delivery, bool(outcome))

    def _finish(self, delivery: _Delivery, delivered: bool) -> None:
        if delivered:
            logger.info("callback delivered", extra=job_extra(delivery.job_id, attempt=delivery.tries))
        else:
            stopped = " (sender closing)" if self._closing.is_set() and delivery.tries < self.attempts else ""
            logger.warning(
                "callback to %s failed after %d try(ies)%s: %s",
                delivery.url,
                delivery.tries,
                stopped,
                delivery.last_error,
                extra=job_extra(delivery.job_id),
            )
        self._report(delivered)

    def _report(self, delivered: bool) -> None:
        if self.on_result is not None:
            try:
                self.on_result(delivered)
            except Exception:  # a metrics hook must not take the delivery thread down
                logger.exception("callback result hook failed")

    def _dropped(self, count: int) -> None:
        if self.on_dropped is not None and count:
            try:
                self.on_dropped(count)
            except Exception:  # nor the shutdown
                logger.exception("callback drop hook failed")

    # -- shutdown --------------------------------------------------------------------------------------

    def close(self, timeout: float = 2.0) -> int:
        """Stop: no new callbacks, no more retries; wait up to ``timeout`` s for the tries left.

        Returns at once when idle. Deliveries waiting out a backoff are given up at once (they had
        their try); queued ones still get one try each within the timeout. Whatever is still queued
        or being tried after it is dropped: each is logged with its job id and reported as not
        delivered, and the count goes to ``on_dropped``. Returns that count.
        """
        self._closing.set()
        with self._cond:
            gave_up = self._schedule.take_waiting()
            self._pending -= len(gave_up)
            self._cond.notify_all()
        for delivery in gave_up:
            self._finish(delivery, False)
        with self._cond:
            done = self._cond.wait_for(lambda: self._pending == 0, timeout)
            queued = self._schedule.take_ready()
            cut_off = list(self._schedule.in_flight)
            for delivery in cut_off:
                delivery.dropped = True
            self._pending = 0
            self._stopped = True
            self._cond.notify_all()
        if done:
            self._poster.close()
            return 0
        for delivery in queued + cut_off:
            state = f"try {delivery.tries} still running" if delivery.dropped else f"{delivery.tries} try(ies) made"
            logger.warning(
                "callback to %s not delivered: dropped at shutdown (%s)",
                delivery.url,
                state,
                extra=job_extra(delivery.job_id),
            )
            self._report(False)
        dropped = len(queued) + len(cut_off)
        logger.warning(
            "%d callback(s) not delivered at shutdown: %d queued, %d still being tried after %.1f s",
            dropped,
            len(queued),
            len(cut_off),
            timeout,
        )
        self._dropped(dropped)
        return dropped


def _read_small_body(response: httpx.Response) -> None:
    """Read a 2xx answer's body if it says it is small, so its connection can be reused; else leave it.

    The answer is in either way: an error here changes nothing about the delivery.
    """
    length = response.headers.get("Content-Length", "")
    if not length.isdigit() or int(length) > MAX_BODY_BYTES:
        return
    try:
        for _ in response.iter_raw():
            pass
    except httpx.HTTPError:
        pass


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, httpx.HTTPError) else str(exc)

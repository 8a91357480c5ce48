"""Delivers completion callbacks in the background: bounded retries, never blocking or failing a job."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import httpx

from twopass.backoff import Backoff, retry
from twopass.notify.guard import CallbackResolutionError, CallbackURLError, Resolver, check_url
from twopass.notify.signing import SIGNATURE_HEADER, sign
from twopass.notify.transport import PinnedTransport
from twopass.observability.logs import job_extra

logger = logging.getLogger(__name__)

#: Statuses worth another try: the receiver is overloaded or restarting.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class _RefusedError(Exception):
    """The receiver answered, and not with a 2xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _RetryableError(_RefusedError):
    """An answer worth another try (429, 503, …)."""


class CallbackSender:
    """POSTs ``{"job_id", "status", ...}`` to each job's ``callback_url``, signed with the deployment secret.

    Deliveries run on up to ``threads`` daemon threads (a receiver that hangs never holds up the
    process's exit); each gets ``attempts`` tries with capped exponential backoff and full jitter.
    Connections go only to addresses the SSRF guard checked (:class:`PinnedTransport`).
    """

    def __init__(
        self,
        secret: str,
        *,
        allow_private: bool = False,
        allow_http: bool = False,
        attempts: int = 5,
        timeout: float = 5.0,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        threads: int = 4,
        on_result: Callable[[bool], None] | None = None,
        resolver: Resolver | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.secret = secret
        self.allow_private = allow_private
        self.allow_http = allow_http
        self.attempts = max(1, attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.on_result = on_result
        # No redirects (a redirect to an internal address would walk around the guard) and no proxies
        # from the environment (a proxy would make its own DNS lookup).
        self._http = httpx.Client(
            transport=transport or PinnedTransport(allow_private=allow_private, resolver=resolver),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "twopass-callback/1"},
        )
        self._max_threads = max(1, threads)
        self._threads: list[threading.Thread] = []
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0  # submitted and not finished (queued or being delivered)
        self._idle = 0  # threads waiting for work
        #: Set by close(): deliveries still get their current try, but no backoff wait and no retry.
        self._closing = threading.Event()
        #: Set when close() gives up waiting: what is still queued is dropped untried.
        self._abandoned = False

    @property
    def pending(self) -> int:
        """Callbacks submitted and not yet delivered or given up."""
        with self._cond:
            return self._pending

    def submit(self, url: str, payload: dict[str, Any]) -> None:
        """Queue one delivery; returns at once."""
        with self._cond:
            if self._closing.is_set():
                closed = True
            else:
                closed = False
                self._pending += 1
                self._queue.put((url, payload))
                if self._idle == 0 and len(self._threads) < self._max_threads:
                    thread = threading.Thread(target=self._run, name=f"callback-{len(self._threads)}", daemon=True)
                    self._threads.append(thread)
                    thread.start()
        if closed:
            logger.warning("callback not sent: the sender is closed", extra=job_extra(str(payload.get("job_id", ""))))
            self._report(False)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
            item = self._queue.get()
            with self._cond:
                self._idle -= 1
            if item is None:
                return
            try:
                if self._abandoned:
                    self._report(False)
                else:
                    self._deliver(*item)
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def _report(self, delivered: bool) -> None:
        if self.on_result is not None:
            try:
                self.on_result(delivered)
            except Exception:  # a metrics hook must not take the delivery thread down
                logger.exception("callback result hook failed")

    def _post(self, url: str, body: bytes) -> None:
        # Form only here: the addresses are checked by the transport, on the one lookup it connects with.
        check_url(url, allow_private=self.allow_private, allow_http=self.allow_http, resolve=False)
        response = self._http.post(
            url, content=body, headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)}
        )
        if response.status_code >= 300:
            raise (_RetryableError if response.status_code in _RETRY_STATUSES else _RefusedError)(response.status_code)

    def _deliver(self, url: str, payload: dict[str, Any]) -> bool:
        job_id = str(payload.get("job_id", ""))
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        tries = 0

        def attempt() -> None:
            nonlocal tries
            tries += 1
            self._post(url, body)

        delivered = False
        try:
            retry(
                attempt,
                attempts=self.attempts,
                backoff=Backoff(base=self.base_delay, cap=self.max_delay, jitter=True),
                stop=self._closing,
                retry_on=(_RetryableError, httpx.TransportError, CallbackResolutionError),
            )
            delivered = True
        except (_RefusedError, httpx.HTTPError, CallbackURLError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, httpx.HTTPError) else str(exc)
            stopped = " (sender closing)" if self._closing.is_set() and tries < self.attempts else ""
            logger.warning(
                "callback to %s failed after %d try(ies)%s: %s", url, tries, stopped, reason, extra=job_extra(job_id)
            )
        except Exception:  # a delivery thread must survive anything one callback does
            logger.exception("callback to %s failed", url, extra=job_extra(job_id))
        if delivered:
            logger.info("callback delivered", extra=job_extra(job_id, attempt=tries))
        self._report(delivered)
        return delivered

    def close(self, timeout: float = 2.0) -> None:
        """Stop: no new callbacks, no more retries; wait up to ``timeout`` s for the tries in progress.

        Returns at once when idle, as soon as the deliveries in flight are done otherwise. Deliveries
        still queued get one try each within the timeout; what is left after it is dropped (daemon
        threads: a receiver that never answers cannot hold the process).
        """
        self._closing.set()
        with self._cond:
            done = self._cond.wait_for(lambda: self._pending == 0, timeout)
            self._abandoned = not done
            left = self._pending
            for _ in self._threads:
                self._queue.put(None)
        if done:
            self._http.close()
        else:
            logger.warning("%d callback(s) still in flight after %.1f s at shutdown: abandoned", left, timeout)

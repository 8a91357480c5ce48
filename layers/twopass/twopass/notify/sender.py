"""Delivers completion callbacks in the background: bounded retries, never blocking or failing a job."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twopass.notify.guard import CallbackURLError, check_url
from twopass.notify.signing import SIGNATURE_HEADER, sign
from twopass.observability.logs import job_extra

logger = logging.getLogger(__name__)

#: Statuses worth another try: the receiver is overloaded or restarting.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class CallbackSender:
    """POSTs ``{"job_id", "status", ...}`` to each job's ``callback_url``, signed with the deployment secret."""

    def __init__(
        self,
        secret: str,
        *,
        allow_private: bool = False,
        allow_http: bool = False,
        attempts: int = 5,
        timeout: float = 5.0,
        base_delay: float = 0.5,
        on_result: Callable[[bool], None] | None = None,
    ) -> None:
        import httpx

        self.secret = secret
        self.allow_private = allow_private
        self.allow_http = allow_http
        self.attempts = attempts
        self.base_delay = base_delay
        self.on_result = on_result
        # No redirects: a redirect to an internal address would walk around the guard.
        self._http = httpx.Client(timeout=timeout, follow_redirects=False, headers={"User-Agent": "twopass-callback/1"})
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="callback")
        self._stopping = threading.Event()

    def submit(self, url: str, payload: dict[str, Any]) -> None:
        """Queue one delivery; returns at once."""
        self._pool.submit(self._deliver, url, payload)

    def _deliver(self, url: str, payload: dict[str, Any]) -> bool:
        job_id = str(payload.get("job_id", ""))
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        delivered = False
        for attempt in range(self.attempts):
            try:
                check_url(url, allow_private=self.allow_private, allow_http=self.allow_http)
                response = self._http.post(
                    url,
                    content=body,
                    headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)},
                )
                if response.status_code < 300:
                    delivered = True
                    break
                retry = response.status_code in _RETRY_STATUSES
                reason = f"HTTP {response.status_code}"
            except CallbackURLError as exc:
                retry, reason = False, str(exc)
            except Exception as exc:  # noqa: BLE001 - any transport failure is worth another try
                retry, reason = True, f"{type(exc).__name__}: {exc}"
            if not retry or attempt == self.attempts - 1:
                logger.warning("callback to %s failed: %s", url, reason, extra=job_extra(job_id))
                break
            # Capped exponential backoff with full jitter.
            if self._stopping.wait(random.uniform(0, min(30.0, self.base_delay * 2**attempt))):
                break
        if delivered:
            logger.info("callback delivered", extra=job_extra(job_id, attempt=attempt + 1))
        if self.on_result is not None:
            self.on_result(delivered)
        return delivered

    def close(self, timeout: float = 10.0) -> None:
        """Let deliveries in flight finish for up to ``timeout`` seconds, then stop retrying."""
        deadline = time.monotonic() + timeout
        self._pool.shutdown(wait=False)
        while self._pool._work_queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stopping.set()
        self._pool.shutdown(wait=True)
        self._http.close()

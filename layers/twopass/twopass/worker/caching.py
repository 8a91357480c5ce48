"""Filling the result cache from the worker: each succeeded slow result, under the key the API looks up.

The API put the key's parts the worker cannot know (the owner, the image's SHA-256, the fast model's
version) in the job message's context; the slow version is the serving model's. Results served by a
canary candidate are not cached (the candidate is on trial), nor are failed jobs (only succeeded
results reach this).
"""

from __future__ import annotations

from typing import Any

from twopass.cascade import FAST_VERSION, IMAGE_SHA256, OWNER
from twopass.jobs.cache import CacheKey, ResultCache
from twopass.queue.base import JobMessage


class CacheFiller:
    """Stores succeeded results of the serving slow model (version ``slow_version``) in ``cache``."""

    def __init__(self, cache: ResultCache, slow_version: str) -> None:
        self.cache = cache
        self.slow_version = slow_version

    def key(self, message: JobMessage) -> CacheKey | None:
        """The key the API will look this image up by; ``None`` when the message lacks its parts."""
        parts = message.context
        if not all(parts.get(name) for name in (OWNER, IMAGE_SHA256, FAST_VERSION)):
            return None
        return CacheKey(parts[OWNER], parts[IMAGE_SHA256], parts[FAST_VERSION], self.slow_version)

    def __call__(self, message: JobMessage, result: dict[str, Any]) -> bool:
        """Cache ``result`` (best effort); ``True`` when it was stored."""
        key = self.key(message)
        if key is None or result.get("version", self.slow_version) != self.slow_version:
            return False
        # The shadow candidate's answer is the rollout's business, not the cached answer's.
        stored = {k: v for k, v in result.items() if k != "shadow"}
        return self.cache.fill(key, stored, message.job_id)

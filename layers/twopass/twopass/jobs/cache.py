"""The result cache: the same image bytes, from the same owner, under the same two model versions,
get the slow result already computed, at once and without a queue.

Key: SHA-256 over the owner, the SHA-256 of the image bytes and both models' versions, so an entry is
never shared between tenants, and a new fast or slow model version starts with an empty cache (old
entries simply stop matching and expire). Only succeeded slow results are stored, and only those of
the serving slow model (never a canary candidate's). Entries expire after a TTL.

In DynamoDB the entries share the jobs table under the reserved key prefix ``cache#`` (never a valid
job id, so ``GET /job`` cannot read one), with the table's TTL attribute; they are written with
``UpdateItem`` (the worker's role already has it) and are absent from the ``pending-created`` index.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from twopass.exceptions import TwopassError

logger = logging.getLogger(__name__)

#: Prefix of cache items in the jobs table; a job id is 32 hex characters, so never this.
CACHE_PREFIX = "cache#"


def image_digest(data: bytes) -> str:
    """SHA-256 of the image bytes, as sent (one changed byte is another image)."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What a cached result is valid for."""

    owner: str
    image_sha256: str
    fast_version: str
    slow_version: str

    def digest(self) -> str:
        # NUL-separated: no field can run into the next one and collide with another key.
        parts = (self.owner, self.image_sha256, self.fast_version, self.slow_version)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def item_id(self) -> str:
        return CACHE_PREFIX + self.digest()


@dataclass(frozen=True)
class CachedResult:
    """A stored slow result and where it came from."""

    result: dict[str, Any]
    #: The job whose slow pass produced it.
    source_job: str
    stored_at: float


class ResultCache(ABC):
    """Where cached results live; ``ttl_seconds`` bounds how long one is served."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds

    @abstractmethod
    def get(self, key: CacheKey) -> CachedResult | None:
        """The live entry for ``key``, if any. Raises ``DependencyError`` when the store is unreachable."""

    @abstractmethod
    def put(self, key: CacheKey, result: dict[str, Any], source_job: str) -> None:
        """Store (or refresh) the entry for ``key``."""

    def fill(self, key: CacheKey, result: dict[str, Any], source_job: str) -> bool:
        """:meth:`put`, best effort: a cache that cannot be written only costs a later slow pass."""
        try:
            self.put(key, result, source_job)
        except TwopassError as exc:
            logger.warning("result cache: could not store the result of job %s: %s", source_job, exc)
            return False
        return True


class MemoryResultCache(ResultCache):
    """In-process twin of the DynamoDB cache (tests, benchmarks, the in-memory stack)."""

    def __init__(self, ttl_seconds: float) -> None:
        super().__init__(ttl_seconds)
        self._entries: dict[str, tuple[CachedResult, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> CachedResult | None:
        with self._lock:
            entry = self._entries.get(key.item_id())
            if entry is None or entry[1] <= time.time():
                return None
            return copy.deepcopy(entry[0])

    def put(self, key: CacheKey, result: dict[str, Any], source_job: str) -> None:
        now = time.time()
        with self._lock:
            self._entries[key.item_id()] = (
                CachedResult(copy.deepcopy(result), source_job, now),
                now + self.ttl_seconds,
            )

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for _, expires in self._entries.values() if expires > time.time())


class DynamoResultCache(ResultCache):
    """Entries in the jobs table (``JobsTable``) under ``cache#<key digest>``."""

    def __init__(self, table_name: str, ttl_seconds: float, *, client: Any | None = None) -> None:
        super().__init__(ttl_seconds)
        self.table_name = table_name
        self._client = client

    @property
    def _db(self) -> Any:
        from twopass.aws import client as aws_client

        return self._client if self._client is not None else aws_client("dynamodb")

    def get(self, key: CacheKey) -> CachedResult | None:
        from twopass.aws import translate_errors
        from twopass.jobs.dynamo.codec import from_dynamo

        with translate_errors("result cache get_item"):
            out = self._db.get_item(TableName=self.table_name, Key={"job_id": {"S": key.item_id()}})
        item = out.get("Item")
        if not item:
            return None
        data = {k: from_dynamo(v) for k, v in item.items()}
        # DynamoDB deletes expired items up to days late: an expired entry is a miss.
        if float(data.get("expires_at") or 0) <= time.time() or not isinstance(data.get("result"), dict):
            return None
        return CachedResult(data["result"], str(data.get("source_job", "")), float(data.get("stored_at") or 0.0))

    def put(self, key: CacheKey, result: dict[str, Any], source_job: str) -> None:
        from twopass.aws import translate_errors
        from twopass.jobs.dynamo.codec import to_dynamo

        now = time.time()
        with translate_errors("result cache update_item"):
            self._db.update_item(
                TableName=self.table_name,
                Key={"job_id": {"S": key.item_id()}},
                UpdateExpression="SET #r = :r, source_job = :j, stored_at = :now, expires_at = :exp",
                ExpressionAttributeNames={"#r": "result"},
                ExpressionAttributeValues={
                    ":r": to_dynamo(result),
                    ":j": to_dynamo(source_job),
                    ":now": to_dynamo(now),
                    ":exp": to_dynamo(int(now + self.ttl_seconds)),
                },
            )


def cache_for(store: object, ttl_seconds: float) -> ResultCache:
    """The cache twin that lives where ``store`` keeps its jobs: the same DynamoDB table, or memory."""
    from twopass.jobs.dynamodb import DynamoJobStore

    if isinstance(store, DynamoJobStore):
        return DynamoResultCache(store.table_name, ttl_seconds, client=store._client)
    return MemoryResultCache(ttl_seconds)

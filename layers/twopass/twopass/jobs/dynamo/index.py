"""The table's two secondary indexes: an owner's jobs (``owner-created``), never-started jobs and final
jobs whose completion event is still owed (``pending-created``, each in partitions of their own)."""

from __future__ import annotations

import time
from typing import Any

from twopass.jobs.base import (
    DEFAULT_PAGE,
    MAX_PAGE,
    JobRecord,
    JobStatus,
    check_page_size,
    decode_cursor,
    encode_cursor,
)
from twopass.jobs.dynamo.codec import OWED_PREFIX, PENDING_SHARDS, job_record, to_dynamo
from twopass.jobs.dynamo.table import DynamoTable

PENDING_INDEX = "pending-created"
OWNER_INDEX = "owner-created"
#: Index queries one list page may make when a status filter skips most items: bounds its latency
#: (each reads up to 1 MB). A page cut short by it still carries a cursor, so nothing is lost.
MAX_LIST_QUERIES = 20


def _cursor(key: dict[str, Any]) -> str:
    """The cursor that goes on after ``key`` (an item or an index key)."""
    return encode_cursor(key["created_at"]["N"], key["job_id"]["S"])


class DynamoIndexes(DynamoTable):
    """Index queries: :meth:`list_jobs` for owners, :meth:`never_started` and :meth:`owed_events` for the reconciler."""

    def list_jobs(
        self, owner: str, *, status: JobStatus | None = None, limit: int = DEFAULT_PAGE, cursor: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        check_page_size(limit)
        start: dict[str, Any] | None = None
        if cursor is not None:
            created_at, job_id = decode_cursor(cursor)
            start = {"job_id": {"S": job_id}, "owner": {"S": owner}, "created_at": {"N": created_at}}
        query: dict[str, Any] = {
            "IndexName": OWNER_INDEX,
            "KeyConditionExpression": "#o = :owner",
            "ExpressionAttributeNames": {"#o": "owner"},
            "ExpressionAttributeValues": {":owner": {"S": owner}},
            "ScanIndexForward": False,
        }
        if status is not None:
            query["FilterExpression"] = "#s = :status"
            query["ExpressionAttributeNames"]["#s"] = "status"
            query["ExpressionAttributeValues"][":status"] = {"S": status.value}
        found, start = self._owner_items(query, start, limit, filtered=status is not None)
        page = found[:limit]
        records = [job_record(i) for i in page]
        if len(found) > limit:
            return records, _cursor(page[-1])
        # Cut short by MAX_LIST_QUERIES: go on from where the index stopped reading.
        return records, None if start is None else _cursor(start)

    def _owner_items(
        self, query: dict[str, Any], start: dict[str, Any] | None, limit: int, *, filtered: bool
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Up to ``limit + 1`` unexpired items from ``start`` on, and the key the index stopped at."""
        found: list[dict[str, Any]] = []
        now = time.time()
        for _ in range(MAX_LIST_QUERIES):
            # One more than the page asks for tells whether another page follows. With a filter the
            # index reads items the filter then drops, so it reads a full page's worth each time.
            page_limit = MAX_PAGE if filtered else limit + 1 - len(found)
            if start is not None:
                query["ExclusiveStartKey"] = start
            out = self._call("query", Limit=page_limit, **query)
            found.extend(item for item in out.get("Items", []) if not job_record(item).expired(now))
            start = out.get("LastEvaluatedKey")
            if len(found) > limit or start is None:
                break
        return found, start

    def never_started(self, created_before: float, limit: int = 100) -> list[JobRecord]:
        records: list[JobRecord] = []
        for shard in range(PENDING_SHARDS):
            out = self._call(
                "query",
                IndexName=PENDING_INDEX,
                KeyConditionExpression="pending = :p AND created_at < :t",
                ExpressionAttributeValues={":p": {"S": str(shard)}, ":t": to_dynamo(float(created_before))},
                Limit=limit,
            )
            records.extend(job_record(item) for item in out.get("Items", []))
        queued = [r for r in records if r.status is JobStatus.QUEUED and not r.expired()]
        return sorted(queued, key=lambda r: r.created_at)[:limit]

    def owed_events(self, updated_before: float, limit: int = 100) -> list[JobRecord]:
        records: list[JobRecord] = []
        for shard in range(PENDING_SHARDS):
            out = self._call(
                "query",
                IndexName=PENDING_INDEX,
                KeyConditionExpression="pending = :p",
                FilterExpression="updated_at < :t AND attribute_exists(event_owed)",
                ExpressionAttributeValues={":p": {"S": f"{OWED_PREFIX}{shard}"}, ":t": to_dynamo(updated_before)},
                Limit=limit,
            )
            records.extend(job_record(item) for item in out.get("Items", []))
        owed = [r for r in records if r.final and r.event_owed and not r.expired()]
        return sorted(owed, key=lambda r: r.updated_at or 0.0)[:limit]

"""DynamoDB job store: one item per job keyed by ``job_id``, conditional writes for every transition.

Worker heartbeats share the table under the reserved key ``#workers`` (never a valid job id), one
top-level attribute per worker, so concurrent workers update it without read-modify-write.

Two attributes exist for operators rather than for the code paths:

* ``final_writes`` counts writes of a final state; the conditional transitions keep it at 1, so an
  item with ``final_writes > 1`` would show a broken invariant (the chaos test checks it).
* ``pending`` (a shard number) marks a job created and never started; it feeds the sparse
  ``pending-created`` index the reconciler reads, and is removed by the first start or final write.

Owners list their jobs through the ``owner-created`` index (``owner``, ``created_at``): only job
items carry ``owner``, so idempotency keys and heartbeats stay out of it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from twopass.aws import client as aws_client
from twopass.aws import translate_errors
from twopass.exceptions import ConditionFailedError, DependencyError, IdempotencyConflictError
from twopass.jobs.base import (
    DEFAULT_PAGE,
    MAX_PAGE,
    PENDING_SHARDS,
    RETRYABLE_STATUSES,
    BatchRecord,
    IdempotencyRecord,
    JobRecord,
    JobStatus,
    JobStore,
    Start,
    WorkerBeat,
    batch_key_id,
    check_page_size,
    decode_cursor,
    encode_cursor,
    idempotency_key_id,
    pending_shard,
)

WORKERS_KEY = "#workers"
PENDING_INDEX = "pending-created"
OWNER_INDEX = "owner-created"
#: Index queries one list page may make when a status filter skips most items: bounds its latency
#: (each reads up to 1 MB). A page cut short by it still carries a cursor, so nothing is lost.
MAX_LIST_QUERIES = 20
#: Tries of a retry's read-then-conditional-write before giving up to a concurrent change.
_RETRY_TRIES = 3
_WORKER_PREFIX = "w_"
_RECORD_FIELDS = (
    "status", "created_at", "updated_at", "started_at", "finished_at", "attempts",
    "fast", "result", "error", "expires_at", "worker", "owner", "image_ref", "context",
    "deadline_at", "priority", "history", "batch_id",
)  # fmt: skip
#: Keys one BatchGetItem call may ask for (DynamoDB's limit).
_BATCH_GET_KEYS = 100
#: Rounds of BatchGetItem for the keys DynamoDB left unprocessed (throttling) before giving up on them.
_BATCH_GET_ROUNDS = 5
_OPEN = "attribute_exists(job_id) AND #s IN (:queued, :running)"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_dynamo(value: Any) -> Any:
    """Python → DynamoDB attribute, floats as Decimal (the only number type boto3 accepts)."""
    if isinstance(value, float):
        return _serializer.serialize(Decimal(repr(value)))
    if isinstance(value, dict):
        return {"M": {k: _to_dynamo(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [_to_dynamo(v) for v in value]}
    return _serializer.serialize(value)


def _from_dynamo(attr: dict[str, Any]) -> Any:
    return _plain(_deserializer.deserialize(attr))


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class DynamoJobStore(JobStore):
    """Job records in the template's ``JobsTable``; ``client`` defaults to the shared boto3 client."""

    def __init__(self, table_name: str, ttl_seconds: int = 7 * 24 * 3600, *, client: Any | None = None) -> None:
        self.table_name = table_name
        self.ttl_seconds = ttl_seconds
        self._client = client

    @property
    def _db(self) -> Any:
        return self._client if self._client is not None else aws_client("dynamodb")

    def _call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        with translate_errors(f"job table {op}"):
            result: dict[str, Any] = getattr(self._db, op)(TableName=self.table_name, **kwargs)
        return result

    def _update(
        self,
        job_id: str,
        expression: str,
        condition: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """A conditional update; ``None`` when the condition refused it."""
        try:
            out = self._call(
                "update_item",
                Key={"job_id": {"S": job_id}},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "status", **(names or {})},
                ExpressionAttributeValues={k: _to_dynamo(v) for k, v in values.items()},
                ReturnValues="ALL_NEW",
            )
        except ConditionFailedError:
            return None
        attributes: dict[str, Any] = out.get("Attributes", {})
        return attributes

    def _item(self, record: JobRecord) -> dict[str, Any]:
        now = time.time()
        record.updated_at = record.updated_at or now
        if record.expires_at is None:
            record.expires_at = int(now + self.ttl_seconds)
        item = {"job_id": _to_dynamo(record.job_id)}
        for name in _RECORD_FIELDS:
            value = getattr(record, name)
            if value is not None:
                item[name] = _to_dynamo(value.value if isinstance(value, JobStatus) else value)
        for name, value in record.extra.items():
            item[name] = _to_dynamo(value)
        if record.status is JobStatus.QUEUED and record.attempts == 0:
            item["pending"] = _to_dynamo(pending_shard(record.job_id))
        return item

    def create(self, record: JobRecord, idempotency: IdempotencyRecord | None = None) -> None:
        item = self._item(record)
        expiry = int(record.expires_at or 0)
        # A token unique to this create: botocore retries a write whose answer was lost, and the
        # retry must recognise its own earlier success instead of failing its own condition.
        token = uuid.uuid4().hex
        item["create_token"] = _to_dynamo(token)
        is_mine = "attribute_not_exists(job_id) OR create_token = :token"
        if idempotency is None:
            self._call(
                "put_item",
                Item=item,
                ConditionExpression=is_mine,
                ExpressionAttributeValues={":token": {"S": token}},
            )
            if record.final:  # answered at once (the result cache): final from its first write
                self._announce(record)
            return
        claim = {
            "job_id": _to_dynamo(idempotency_key_id(idempotency.key_hash)),
            "target": _to_dynamo(record.job_id),
            "body_hash": _to_dynamo(idempotency.body_hash),
            "expires_at": _to_dynamo(min(idempotency.expires_at or expiry, expiry)),
        }
        claim_is_mine = "attribute_not_exists(job_id) OR target = :job"
        # One transaction: a key never points at a job that was not written, nor the reverse.
        try:
            with translate_errors("job table transaction"):
                self._db.transact_write_items(
                    TransactItems=[
                        {"Put": {"TableName": self.table_name, "Item": item, "ConditionExpression": is_mine,
                                 "ExpressionAttributeValues": {":token": {"S": token}}}},
                        {"Put": {"TableName": self.table_name, "Item": claim, "ConditionExpression": claim_is_mine,
                                 "ExpressionAttributeValues": {":job": {"S": record.job_id}}}},
                    ]
                )  # fmt: skip
        except ConditionFailedError as exc:
            if len(exc.reasons) > 1 and exc.reasons[1] == "ConditionalCheckFailed":
                raise IdempotencyConflictError("idempotency key already used for another job") from exc
            raise
        if record.final:
            self._announce(record)

    def create_batch(self, batch: BatchRecord) -> None:
        if batch.expires_at is None:
            batch.expires_at = int(time.time() + self.ttl_seconds)
        # No ``owner`` attribute: that would put the batch into the owner-created index of jobs.
        item = {
            "job_id": _to_dynamo(batch_key_id(batch.batch_id)),
            "batch_owner": _to_dynamo(batch.owner),
            "items": _to_dynamo(batch.items),
            "created_at": _to_dynamo(batch.created_at),
            "expires_at": _to_dynamo(batch.expires_at),
        }
        self._call("put_item", Item=item)

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        out = self._call("get_item", Key={"job_id": {"S": batch_key_id(batch_id)}}, ConsistentRead=True)
        item = out.get("Item")
        if not item:
            return None
        data = {k: _from_dynamo(v) for k, v in item.items()}
        batch = BatchRecord(
            batch_id=batch_id,
            owner=str(data.get("batch_owner", "")),
            items=list(data.get("items") or []),
            created_at=float(data.get("created_at", 0.0)),
            expires_at=data.get("expires_at"),
        )
        return None if batch.expired() else batch

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        """BatchGetItem, 100 keys a call, unprocessed keys asked again (a few rounds, then an error)."""
        wanted = list(dict.fromkeys(job_ids))
        found: dict[str, JobRecord] = {}
        now = time.time()
        for start in range(0, len(wanted), _BATCH_GET_KEYS):
            keys: list[dict[str, Any]] = [{"job_id": {"S": j}} for j in wanted[start : start + _BATCH_GET_KEYS]]
            for _ in range(_BATCH_GET_ROUNDS):
                with translate_errors("job table batch_get_item"):
                    out = self._db.batch_get_item(
                        RequestItems={self.table_name: {"Keys": keys, "ConsistentRead": True}}
                    )
                for item in out.get("Responses", {}).get(self.table_name, []):
                    record = self._record(item)
                    if not record.expired(now):
                        found[record.job_id] = record
                keys = out.get("UnprocessedKeys", {}).get(self.table_name, {}).get("Keys", [])
                if not keys:
                    break
                time.sleep(0.05)
            if keys:
                raise DependencyError(f"the job table left {len(keys)} reads unprocessed (throttled)")
        return found

    def idempotency(self, key_hash: str) -> IdempotencyRecord | None:
        out = self._call("get_item", Key={"job_id": {"S": idempotency_key_id(key_hash)}}, ConsistentRead=True)
        item = out.get("Item")
        if not item:
            return None
        data = {k: _from_dynamo(v) for k, v in item.items()}
        if data.get("expires_at") is not None and data["expires_at"] <= time.time():
            return None
        return IdempotencyRecord(key_hash, str(data["target"]), str(data["body_hash"]), data.get("response"))

    def remember_response(self, key_hash: str, response: dict[str, Any]) -> None:
        self._call(
            "update_item",
            Key={"job_id": {"S": idempotency_key_id(key_hash)}},
            UpdateExpression="SET #r = :r",
            ConditionExpression="attribute_exists(job_id)",
            ExpressionAttributeNames={"#r": "response"},
            ExpressionAttributeValues={":r": _to_dynamo(response)},
        )

    def forget_idempotency(self, key_hash: str) -> None:
        self._call("delete_item", Key={"job_id": {"S": idempotency_key_id(key_hash)}})

    def get(self, job_id: str) -> JobRecord | None:
        out = self._call("get_item", Key={"job_id": {"S": job_id}}, ConsistentRead=True)
        item = out.get("Item")
        if not item:
            return None
        record = self._record(item)
        return None if record.expired() else record

    @staticmethod
    def _record(item: dict[str, Any]) -> JobRecord:
        data = {k: _from_dynamo(v) for k, v in item.items()}
        for internal in ("create_token", "pending"):
            data.pop(internal, None)
        known = {k: data.pop(k) for k in list(data) if k in _RECORD_FIELDS or k == "job_id"}
        known["status"] = JobStatus(known.get("status", JobStatus.QUEUED))
        return JobRecord(**known, extra=data)

    def start(self, job_id: str, worker_id: str) -> JobRecord | None:
        now = time.time()
        # A queued job past its deadline is never started; a running one (a redelivery) already was.
        in_time = "attribute_not_exists(deadline_at) OR deadline_at > :now"
        attrs = self._update(
            job_id,
            "SET #s = :running, started_at = :now, updated_at = :now, worker = :w ADD attempts :one REMOVE pending",
            f"attribute_exists(job_id) AND (#s = :running OR (#s = :queued AND ({in_time})))",
            {":running": "running", ":queued": "queued", ":now": now, ":w": worker_id, ":one": 1},
        )
        return None if attrs is None else self._record(attrs)

    def _finish(
        self,
        job_id: str,
        sets: str,
        condition: str,
        values: dict[str, Any],
        names: dict[str, str],
        start: Start | None = None,
    ) -> bool:
        """A conditional write of a final state: ``sets`` plus the timestamps, out of the pending index.

        With ``start``, the write also does what :meth:`start` does, under its deadline condition.
        """
        values = {**values, ":now": time.time(), ":one": 1}
        remove = "pending, #e" if "#e = " not in sets else "pending"
        adds = "final_writes :one"
        if start is not None:
            sets += ", started_at = :started, worker = :w"
            adds += ", attempts :one"
            values.update({":started": start.at, ":w": start.worker_id, ":running": "running"})
            in_time = "#s = :running OR attribute_not_exists(deadline_at) OR deadline_at > :started"
            condition = f"({condition}) AND ({in_time})"
        expression = f"SET {sets}, finished_at = :now, updated_at = :now REMOVE {remove} ADD {adds}"
        attrs = self._update(job_id, expression, condition, values, {"#e": "error", **names})
        if attrs is None:
            return False
        self._announce(self._record(attrs))
        return True

    def succeed(self, job_id: str, result: dict[str, Any], *, start: Start | None = None) -> bool:
        return self._finish(
            job_id,
            "#s = :done, #r = :result",
            _OPEN,
            {":done": "succeeded", ":queued": "queued", ":running": "running", ":result": result},
            {"#r": "result"},
            start,
        )

    def fail(self, job_id: str, error: str, *, only_if_queued: bool = False, start: Start | None = None) -> bool:
        values: dict[str, Any] = {":failed": "failed", ":queued": "queued", ":error": error[:2000]}
        condition = "attribute_exists(job_id) AND #s = :queued"
        if not only_if_queued:
            values[":running"] = "running"
            condition = _OPEN
        return self._finish(job_id, "#s = :failed, #e = :error", condition, values, {}, start)

    def reopen(self, job_id: str) -> bool:
        return (
            self._update(
                job_id,
                "SET #s = :queued, updated_at = :now REMOVE #e, finished_at, final_writes ADD redrives :one",
                "attribute_exists(job_id) AND #s = :failed",
                {":queued": "queued", ":failed": "failed", ":now": time.time(), ":one": 1},
                names={"#e": "error"},
            )
            is not None
        )

    def cancel(self, job_id: str) -> bool:
        values = {":cancelled": "cancelled", ":queued": "queued", ":running": "running"}
        return self._finish(job_id, "#s = :cancelled", _OPEN, values, {})

    def expire(self, job_id: str, reason: str) -> bool:
        return self._finish(
            job_id,
            "#s = :expired, #e = :error",
            "attribute_exists(job_id) AND #s = :queued",
            {":expired": "expired", ":queued": "queued", ":error": reason[:2000]},
            {},
        )

    def keep_image(self, job_id: str, ref: str) -> bool:
        return (
            self._update(
                job_id,
                "SET image_ref = :ref",
                "attribute_exists(job_id) AND attribute_not_exists(image_ref) AND #s <> :succeeded",
                {":ref": ref, ":succeeded": "succeeded"},
            )
            is not None
        )

    def retry(self, job_id: str) -> bool:
        # The ended run's outcome goes into `history`, and an update expression cannot copy attributes
        # into a new list element: read it, then write only if nothing changed in between.
        for _ in range(_RETRY_TRIES):
            record = self.get(job_id)
            if record is None or record.status not in RETRYABLE_STATUSES:
                return False
            now = time.time()
            attrs = self._update(
                job_id,
                "SET #s = :queued, updated_at = :now, history = list_append(if_not_exists(history, :none), :entry) "
                "REMOVE #e, finished_at, deadline_at, #r, final_writes",
                "attribute_exists(job_id) AND #s = :was AND updated_at = :seen",
                {
                    ":queued": "queued",
                    ":now": now,
                    ":none": [],
                    ":entry": [record.outcome(now)],
                    ":was": record.status.value,
                    ":seen": record.updated_at,
                },
                {"#e": "error", "#r": "result"},
            )
            if attrs is not None:
                return True
        return False

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
        found: list[dict[str, Any]] = []
        now = time.time()
        for _ in range(MAX_LIST_QUERIES):
            # One more than the page asks for tells whether another page follows. With a filter the
            # index reads items the filter then drops, so it reads a full page's worth each time.
            want = limit + 1 - len(found)
            page_limit = MAX_PAGE if status is not None else want
            if start is not None:
                query["ExclusiveStartKey"] = start
            out = self._call("query", Limit=page_limit, **query)
            items = out.get("Items", [])
            found.extend(item for item in items if not self._record(item).expired(now))
            start = out.get("LastEvaluatedKey")
            if len(found) > limit or start is None:
                break
        page = found[:limit]
        if len(found) > limit:
            last = page[-1]
            return [self._record(i) for i in page], encode_cursor(last["created_at"]["N"], last["job_id"]["S"])
        if start is not None:
            # Cut short by MAX_LIST_QUERIES: go on from where the index stopped reading.
            return [self._record(i) for i in page], encode_cursor(start["created_at"]["N"], start["job_id"]["S"])
        return [self._record(i) for i in page], None

    def never_started(self, created_before: float, limit: int = 100) -> list[JobRecord]:
        records: list[JobRecord] = []
        for shard in range(PENDING_SHARDS):
            out = self._call(
                "query",
                IndexName=PENDING_INDEX,
                KeyConditionExpression="pending = :p AND created_at < :t",
                ExpressionAttributeValues={":p": {"S": str(shard)}, ":t": _to_dynamo(float(created_before))},
                Limit=limit,
            )
            records.extend(self._record(item) for item in out.get("Items", []))
        queued = [r for r in records if r.status is JobStatus.QUEUED and not r.expired()]
        return sorted(queued, key=lambda r: r.created_at)[:limit]

    def beat(self, worker_id: str, info: dict[str, Any]) -> None:
        now = time.time()
        self._call(
            "update_item",
            Key={"job_id": {"S": WORKERS_KEY}},
            UpdateExpression="SET #w = :beat, expires_at = :exp",
            ExpressionAttributeNames={"#w": _WORKER_PREFIX + worker_id},
            ExpressionAttributeValues={":beat": _to_dynamo({**info, "at": now}), ":exp": _to_dynamo(int(now + 86400))},
        )

    def forget_worker(self, worker_id: str) -> None:
        self._call(
            "update_item",
            Key={"job_id": {"S": WORKERS_KEY}},
            UpdateExpression="REMOVE #w",
            ExpressionAttributeNames={"#w": _WORKER_PREFIX + worker_id},
        )

    def workers(self) -> list[WorkerBeat]:
        item = self._call("get_item", Key={"job_id": {"S": WORKERS_KEY}}, ConsistentRead=True).get("Item") or {}
        beats = []
        for name, attr in item.items():
            if name.startswith(_WORKER_PREFIX):
                info = _from_dynamo(attr)
                beats.append(WorkerBeat(name.removeprefix(_WORKER_PREFIX), float(info.pop("at", 0.0)), info))
        return sorted(beats, key=lambda b: b.at, reverse=True)

    def ping(self) -> None:
        self._call("describe_table")

"""Job records ↔ DynamoDB items: attribute values in DynamoDB's typed form, floats as Decimal."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from twopass.jobs.base import JobRecord, JobStatus

#: Attributes of a job item that are :class:`JobRecord` fields (any other is kept in ``extra``).
RECORD_FIELDS = (
    "status", "created_at", "updated_at", "started_at", "finished_at", "attempts",
    "fast", "result", "error", "expires_at", "worker", "owner", "image_ref", "context",
    "deadline_at", "priority", "history", "batch_id", "event_owed",
)  # fmt: skip
#: Attributes the store keeps for itself, never shown in a record.
_INTERNAL = ("create_token", "pending")

#: Shards of the sparse "created, never started" index, so a burst of creates spreads over partitions.
PENDING_SHARDS = 8
#: Partitions of the pending index that hold final jobs whose event is owed: this, then a shard.
OWED_PREFIX = "owed-"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_dynamo(value: Any) -> Any:
    """Python → DynamoDB attribute, floats as Decimal (the only number type boto3 accepts)."""
    if isinstance(value, float):
        return _serializer.serialize(Decimal(repr(value)))
    if isinstance(value, dict):
        return {"M": {k: to_dynamo(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [to_dynamo(v) for v in value]}
    return _serializer.serialize(value)


def from_dynamo(attr: dict[str, Any]) -> Any:
    """DynamoDB attribute → Python, whole numbers as int and the others as float."""
    return _plain(_deserializer.deserialize(attr))


def plain_item(item: dict[str, Any]) -> dict[str, Any]:
    """A whole item's attributes in Python form."""
    return {k: from_dynamo(v) for k, v in item.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def job_item(record: JobRecord, ttl_seconds: int) -> dict[str, Any]:
    """The item of a new job; fills in the record's ``updated_at`` and ``expires_at`` when unset."""
    now = time.time()
    record.updated_at = record.updated_at or now
    if record.expires_at is None:
        record.expires_at = int(now + ttl_seconds)
    item = {"job_id": to_dynamo(record.job_id)}
    for name in RECORD_FIELDS:
        value = getattr(record, name)
        if value is not None:
            item[name] = to_dynamo(value.value if isinstance(value, JobStatus) else value)
    for name, value in record.extra.items():
        item[name] = to_dynamo(value)
    if record.status is JobStatus.QUEUED and record.attempts == 0:
        item["pending"] = to_dynamo(pending_shard(record.job_id))
    elif record.final and record.event_owed:  # answered at once, its event owed (see the lifecycle)
        item["pending"] = to_dynamo(owed_shard(record.job_id))
    return item


def pending_shard(job_id: str) -> str:
    """The shard of ``job_id`` in the "created, never started" index (a job item's ``pending``)."""
    return str(int(job_id[:2], 16) % PENDING_SHARDS)


def owed_shard(job_id: str) -> str:
    """The shard of ``job_id`` among final jobs whose event is owed: same index, other partitions."""
    return OWED_PREFIX + pending_shard(job_id)


def job_record(item: dict[str, Any]) -> JobRecord:
    """The record of a job item; attributes that are no record field go to ``extra``."""
    data = plain_item(item)
    for internal in _INTERNAL:
        data.pop(internal, None)
    known = {k: data.pop(k) for k in list(data) if k in RECORD_FIELDS or k == "job_id"}
    known["status"] = JobStatus(known.get("status", JobStatus.QUEUED))
    return JobRecord(**known, extra=data)

"""DynamoDB job store: one item per job keyed by ``job_id``, conditional writes for every transition.

Worker heartbeats share the table under the reserved key ``#workers`` (never a valid job id), one
top-level attribute per worker, so concurrent workers update it without read-modify-write.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from twopass.aws import client
from twopass.exceptions import DependencyError, IdempotencyConflictError
from twopass.jobs.base import IdempotencyRecord, JobRecord, JobStatus, JobStore, WorkerBeat, idempotency_key_id

WORKERS_KEY = "#workers"
_IS_NEW = "attribute_not_exists(job_id)"
_WORKER_PREFIX = "w_"
_RECORD_FIELDS = (
    "status", "created_at", "updated_at", "started_at", "finished_at", "attempts",
    "fast", "result", "error", "expires_at", "worker",
)  # fmt: skip

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


def _is_conditional_failure(exc: ClientError) -> bool:
    return bool(exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


class DynamoJobStore(JobStore):
    def __init__(self, table_name: str, ttl_seconds: int = 7 * 24 * 3600) -> None:
        self.table_name = table_name
        self.ttl_seconds = ttl_seconds

    @property
    def _db(self) -> Any:
        return client("dynamodb")

    def _call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = getattr(self._db, op)(TableName=self.table_name, **kwargs)
            return result
        except ClientError as exc:
            if _is_conditional_failure(exc):
                raise
            raise DependencyError(
                f"job table {op} failed: {exc.response.get('Error', {}).get('Message', exc)}"
            ) from exc
        except BotoCoreError as exc:
            raise DependencyError(f"job table unreachable: {exc}") from exc

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
        except ClientError:  # _call lets only conditional failures through as ClientError
            return None
        attributes: dict[str, Any] = out.get("Attributes", {})
        return attributes

    def create(self, record: JobRecord, idempotency: IdempotencyRecord | None = None) -> None:
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
        if idempotency is None:
            self._call("put_item", Item=item, ConditionExpression="attribute_not_exists(job_id)")
            return
        claim = {
            "job_id": _to_dynamo(idempotency_key_id(idempotency.key_hash)),
            "target": _to_dynamo(record.job_id),
            "body_hash": _to_dynamo(idempotency.body_hash),
            "expires_at": _to_dynamo(min(idempotency.expires_at or record.expires_at, record.expires_at)),
        }
        # One transaction: a key never points at a job that was not written, nor the reverse.
        try:
            self._db.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": self.table_name, "Item": i, "ConditionExpression": _IS_NEW}}
                    for i in (item, claim)
                ]
            )
        except ClientError as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                raise IdempotencyConflictError(
                    f"idempotency key already used for another job ({record.job_id})"
                ) from exc
            raise DependencyError(f"job table transaction failed: {exc}") from exc
        except BotoCoreError as exc:
            raise DependencyError(f"job table unreachable: {exc}") from exc

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
        known = {k: data.pop(k) for k in list(data) if k in _RECORD_FIELDS or k == "job_id"}
        known["status"] = JobStatus(known.get("status", JobStatus.QUEUED))
        return JobRecord(**known, extra=data)

    def start(self, job_id: str, worker_id: str) -> JobRecord | None:
        now = time.time()
        attrs = self._update(
            job_id,
            "SET #s = :running, started_at = :now, updated_at = :now, worker = :w ADD attempts :one",
            "attribute_exists(job_id) AND #s IN (:queued, :running)",
            {":running": "running", ":queued": "queued", ":now": now, ":w": worker_id, ":one": 1},
        )
        return None if attrs is None else self._record(attrs)

    def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
        now = time.time()
        return (
            self._update(
                job_id,
                # final_writes proves in tests that a final state is never written twice.
                "SET #s = :done, #r = :result, finished_at = :now, updated_at = :now REMOVE #e ADD final_writes :one",
                "attribute_exists(job_id) AND #s IN (:queued, :running)",
                {":done": "succeeded", ":queued": "queued", ":running": "running"}
                | {":result": result, ":now": now, ":one": 1},
                names={"#r": "result", "#e": "error"},
            )
            is not None
        )

    def fail(self, job_id: str, error: str, *, only_if_queued: bool = False) -> bool:
        now = time.time()
        allowed = "#s = :queued" if only_if_queued else "#s IN (:queued, :running)"
        values: dict[str, Any] = {":failed": "failed", ":queued": "queued", ":error": error[:2000]}
        values |= {":now": now, ":one": 1}
        if not only_if_queued:
            values[":running"] = "running"
        return (
            self._update(
                job_id,
                "SET #s = :failed, #e = :error, finished_at = :now, updated_at = :now ADD final_writes :one",
                f"attribute_exists(job_id) AND {allowed}",
                values,
                names={"#e": "error"},
            )
            is not None
        )

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

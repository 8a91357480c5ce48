"""Writing new jobs and the side records that share the table: idempotency keys and batches."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from twopass.aws import translate_errors
from twopass.exceptions import ConditionFailedError, DependencyError, IdempotencyConflictError
from twopass.jobs.base import BatchRecord, IdempotencyRecord, JobRecord
from twopass.jobs.dynamo.codec import job_item, job_record, plain_item, to_dynamo
from twopass.jobs.dynamo.table import DynamoTable

#: Keys one BatchGetItem call may ask for (DynamoDB's limit).
_BATCH_GET_KEYS = 100
#: Rounds of BatchGetItem for the keys DynamoDB left unprocessed (throttling) before giving up on them.
_BATCH_GET_ROUNDS = 5
#: The create's condition: a new item, or the item this very create wrote (see ``create``).
_IS_MINE = "attribute_not_exists(job_id) OR create_token = :token"


def batch_key_id(batch_id: str) -> str:
    """Table key of a batch record: never a valid job id, so ``GET /job`` cannot read it."""
    return f"batch#{batch_id}"


def idempotency_key_id(key_hash: str) -> str:
    """Table key of an idempotency record: never a valid job id, so ``GET /job`` cannot read it."""
    return f"idem#{key_hash}"


class DynamoRecords(DynamoTable):
    """Job creation (with its idempotency key, in one transaction), idempotency keys, batches, batch reads."""

    def create(self, record: JobRecord, idempotency: IdempotencyRecord | None = None) -> None:
        if record.final:  # answered at once: its event is owed from this very write
            record.event_owed = self._outbox_token()
        item = job_item(record, self.ttl_seconds)
        # A token unique to this create: botocore retries a write whose answer was lost, and the
        # retry must recognise its own earlier success instead of failing its own condition.
        token = uuid.uuid4().hex
        item["create_token"] = to_dynamo(token)
        if idempotency is None:
            self._call(
                "put_item", Item=item, ConditionExpression=_IS_MINE, ExpressionAttributeValues={":token": {"S": token}}
            )
        else:
            self._create_claimed(record, item, token, idempotency)
        if record.final:  # answered at once (the result cache): final from its first write
            self._announce(record)

    def _create_claimed(
        self, record: JobRecord, item: dict[str, Any], token: str, idempotency: IdempotencyRecord
    ) -> None:
        """Write the job and its idempotency key in one transaction: a key never points at a job that
        was not written, nor the reverse."""
        expiry = int(record.expires_at or 0)
        claim = {
            "job_id": to_dynamo(idempotency_key_id(idempotency.key_hash)),
            "target": to_dynamo(record.job_id),
            "body_hash": to_dynamo(idempotency.body_hash),
            "expires_at": to_dynamo(min(idempotency.expires_at or expiry, expiry)),
        }
        claim_is_mine = "attribute_not_exists(job_id) OR target = :job"
        try:
            with translate_errors("job table transaction"):
                self._db.transact_write_items(
                    TransactItems=[
                        {"Put": {"TableName": self.table_name, "Item": item, "ConditionExpression": _IS_MINE,
                                 "ExpressionAttributeValues": {":token": {"S": token}}}},
                        {"Put": {"TableName": self.table_name, "Item": claim, "ConditionExpression": claim_is_mine,
                                 "ExpressionAttributeValues": {":job": {"S": record.job_id}}}},
                    ]
                )  # fmt: skip
        except ConditionFailedError as exc:
            if len(exc.reasons) > 1 and exc.reasons[1] == "ConditionalCheckFailed":
                raise IdempotencyConflictError("idempotency key already used for another job") from exc
            raise

    def idempotency(self, key_hash: str) -> IdempotencyRecord | None:
        item = self._get_item(idempotency_key_id(key_hash))
        if item is None:
            return None
        data = plain_item(item)
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
            ExpressionAttributeValues={":r": to_dynamo(response)},
        )

    def forget_idempotency(self, key_hash: str) -> None:
        self._call("delete_item", Key={"job_id": {"S": idempotency_key_id(key_hash)}})

    def create_batch(self, batch: BatchRecord) -> None:
        if batch.expires_at is None:
            batch.expires_at = int(time.time() + self.ttl_seconds)
        # No ``owner`` attribute: that would put the batch into the owner-created index of jobs.
        item = {
            "job_id": to_dynamo(batch_key_id(batch.batch_id)),
            "batch_owner": to_dynamo(batch.owner),
            "items": to_dynamo(batch.items),
            "created_at": to_dynamo(batch.created_at),
            "expires_at": to_dynamo(batch.expires_at),
        }
        self._call("put_item", Item=item)

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        item = self._get_item(batch_key_id(batch_id))
        if item is None:
            return None
        data = plain_item(item)
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
            for item in self._batch_get(wanted[start : start + _BATCH_GET_KEYS]):
                record = job_record(item)
                if not record.expired(now):
                    found[record.job_id] = record
        return found

    def _batch_get(self, job_ids: list[str]) -> list[dict[str, Any]]:
        """The items of up to 100 keys; raises ``DependencyError`` when DynamoDB keeps leaving some unread."""
        keys: list[dict[str, Any]] = [{"job_id": {"S": j}} for j in job_ids]
        items: list[dict[str, Any]] = []
        for _ in range(_BATCH_GET_ROUNDS):
            with translate_errors("job table batch_get_item"):
                out = self._db.batch_get_item(RequestItems={self.table_name: {"Keys": keys, "ConsistentRead": True}})
            items.extend(out.get("Responses", {}).get(self.table_name, []))
            keys = out.get("UnprocessedKeys", {}).get(self.table_name, {}).get("Keys", [])
            if not keys:
                return items
            time.sleep(0.05)
        raise DependencyError(f"the job table left {len(keys)} reads unprocessed (throttled)")

"""The table access every part of the DynamoDB job store shares: calls, conditional updates, reads."""

from __future__ import annotations

from typing import Any

from twopass.aws import client as aws_client
from twopass.aws import translate_errors
from twopass.exceptions import ConditionFailedError
from twopass.jobs.base import JobRecord, JobStore
from twopass.jobs.dynamo.codec import job_record, to_dynamo


class DynamoTable(JobStore):
    """The jobs table: ``client`` defaults to the shared boto3 client."""

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

    def _get_item(self, key: str) -> dict[str, Any] | None:
        """The item under ``key`` (a strongly consistent read); ``None`` when there is none."""
        item: dict[str, Any] | None = self._call("get_item", Key={"job_id": {"S": key}}, ConsistentRead=True).get(
            "Item"
        )
        return item or None

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
                ExpressionAttributeValues={k: to_dynamo(v) for k, v in values.items()},
                ReturnValues="ALL_NEW",
            )
        except ConditionFailedError:
            return None
        attributes: dict[str, Any] = out.get("Attributes", {})
        return attributes

    def get(self, job_id: str) -> JobRecord | None:
        item = self._get_item(job_id)
        if item is None:
            return None
        record = job_record(item)
        return None if record.expired() else record

    def ping(self) -> None:
        self._call("describe_table")

"""SQS backend: publisher for the API, long-polling source for the worker."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from twopass.aws import client
from twopass.exceptions import DependencyError, EnqueueError
from twopass.queue.base import Delivery, JobMessage, JobPublisher, MessageFormatError, MessageSource

logger = logging.getLogger(__name__)

_BATCH = 10  # SQS's limit for every *Batch call and for one ReceiveMessage


def _chunks(items: Sequence[Delivery], size: int = _BATCH) -> list[Sequence[Delivery]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class SqsPublisher(JobPublisher):
    def __init__(self, queue_url: str) -> None:
        self.queue_url = queue_url

    def publish(self, message: JobMessage) -> str:
        try:
            out = client("sqs").send_message(
                QueueUrl=self.queue_url,
                MessageBody=message.encode(),
                MessageAttributes={"job_id": {"DataType": "String", "StringValue": message.job_id}},
            )
        except (ClientError, BotoCoreError) as exc:
            raise EnqueueError(f"could not publish job {message.job_id}: {exc}") from exc
        return str(out["MessageId"])

    def ping(self) -> dict[str, Any]:
        try:
            attrs = client("sqs").get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
        except (ClientError, BotoCoreError) as exc:
            raise DependencyError(f"queue unreachable: {exc}") from exc
        return {
            "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        }


class SqsSource(MessageSource):
    def __init__(self, queue_url: str, visibility_timeout: int = 60) -> None:
        self.queue_url = queue_url
        self.visibility_timeout = visibility_timeout
        self.max_receive_count = self._read_max_receive_count()

    def _read_max_receive_count(self) -> int | None:
        # Read from the queue itself so the worker and the template's redrive policy cannot disagree.
        try:
            attrs = client("sqs").get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["RedrivePolicy"])
        except (ClientError, BotoCoreError) as exc:
            raise DependencyError(f"queue unreachable: {exc}") from exc
        policy = attrs.get("Attributes", {}).get("RedrivePolicy")
        return int(json.loads(policy)["maxReceiveCount"]) if policy else None

    def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]:
        out = client("sqs").receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(_BATCH, max_messages)),
            WaitTimeSeconds=int(max(0, min(20, wait_seconds))),
            VisibilityTimeout=self.visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            MessageAttributeNames=["All"],
        )
        deliveries = []
        for msg in out.get("Messages", []):
            count = int(msg.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            try:
                job: JobMessage | None = JobMessage.decode(msg["Body"])
                error = None
            except MessageFormatError as exc:
                job, error = None, str(exc)
            deliveries.append(Delivery(msg["MessageId"], msg["ReceiptHandle"], count, job, error, raw=msg))
        return deliveries

    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        failed: list[Delivery] = []
        for chunk in _chunks(deliveries):
            entries = [{"Id": str(i), "ReceiptHandle": d.receipt} for i, d in enumerate(chunk)]
            out = client("sqs").delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed.extend(chunk[int(f["Id"])] for f in out.get("Failed", []))
        if failed:
            logger.warning("could not delete %d message(s); they will be redelivered", len(failed))
        return failed

    def _change_visibility(self, deliveries: Sequence[Delivery], seconds: int) -> None:
        for chunk in _chunks(deliveries):
            entries = [
                {"Id": str(i), "ReceiptHandle": d.receipt, "VisibilityTimeout": seconds} for i, d in enumerate(chunk)
            ]
            client("sqs").change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        self._change_visibility(deliveries, 0)

    def extend(self, deliveries: Sequence[Delivery], seconds: int) -> None:
        self._change_visibility(deliveries, seconds)

"""SQS backend: publisher for the API, long-polling source for the worker."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from twopass import aws
from twopass.aws import translate_errors
from twopass.exceptions import DependencyError, EnqueueError
from twopass.queue.base import Delivery, JobMessage, JobPublisher, MessageFormatError, MessageSource

logger = logging.getLogger(__name__)

_BATCH = 10  # SQS's limit for every *Batch call and for one ReceiveMessage
_LONGEST_POLL = 20  # SQS's limit for WaitTimeSeconds


def _chunks(items: Sequence[Delivery], size: int = _BATCH) -> list[Sequence[Delivery]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class SqsPublisher(JobPublisher):
    def __init__(self, queue_url: str, client: Any | None = None) -> None:
        self.queue_url = queue_url
        self.client = client if client is not None else aws.client("sqs")

    def publish(self, message: JobMessage) -> str:
        try:
            with translate_errors(f"publish job {message.job_id}"):
                out = self.client.send_message(
                    QueueUrl=self.queue_url,
                    MessageBody=message.encode(),
                    MessageAttributes={"job_id": {"DataType": "String", "StringValue": message.job_id}},
                )
        except DependencyError as exc:
            # The API answers EnqueueError with a 503 and marks the recorded job failed.
            raise EnqueueError(str(exc)) from exc.__cause__
        return str(out["MessageId"])

    def ping(self) -> dict[str, Any]:
        with translate_errors("queue attributes"):
            attrs = self.client.get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
        return {
            "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        }


class SqsSource(MessageSource):
    def __init__(self, queue_url: str, visibility_timeout: int = 60, client: Any | None = None) -> None:
        self.queue_url = queue_url
        self.visibility_timeout = visibility_timeout
        self.client = client if client is not None else aws.client("sqs")
        self.max_receive_count = self._read_max_receive_count()

    def _read_max_receive_count(self) -> int | None:
        # Read from the queue itself so the worker and the template's redrive policy cannot disagree.
        with translate_errors("queue redrive policy"):
            attrs = self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["RedrivePolicy"])
        policy = attrs.get("Attributes", {}).get("RedrivePolicy")
        return int(json.loads(policy)["maxReceiveCount"]) if policy else None

    def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]:
        with translate_errors("receive messages"):
            out = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=max(1, min(_BATCH, max_messages)),
                WaitTimeSeconds=int(max(0, min(_LONGEST_POLL, wait_seconds))),
                VisibilityTimeout=self.visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        deliveries = []
        for msg in out.get("Messages", []):
            try:
                job = JobMessage.decode(msg["Body"])
            except MessageFormatError as exc:
                # Not ours: it stays invisible, comes back, and is dead-lettered for a person to look at.
                logger.error("message %s is not a job message: %s", msg["MessageId"], exc)
                continue
            count = int(msg.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            deliveries.append(Delivery(msg["MessageId"], msg["ReceiptHandle"], count, job))
        return deliveries

    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        failed: list[Delivery] = []
        for chunk in _chunks(deliveries):
            entries = [{"Id": str(i), "ReceiptHandle": d.receipt} for i, d in enumerate(chunk)]
            with translate_errors("delete messages"):
                out = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed.extend(chunk[int(f["Id"])] for f in out.get("Failed", []))
        if failed:
            logger.warning("could not delete %d message(s); they will be redelivered", len(failed))
        return failed

    def _change_visibility(self, deliveries: Sequence[Delivery], seconds: int) -> None:
        for chunk in _chunks(deliveries):
            entries = [
                {"Id": str(i), "ReceiptHandle": d.receipt, "VisibilityTimeout": seconds} for i, d in enumerate(chunk)
            ]
            with translate_errors("change message visibility"):
                self.client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        self._change_visibility(deliveries, 0)

    def extend(self, deliveries: Sequence[Delivery], seconds: int) -> None:
        self._change_visibility(deliveries, seconds)

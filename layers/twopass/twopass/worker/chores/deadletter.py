"""The dead-letter queue's sweep: record why jobs landed there (``twopass.tools.redrive`` moves them back).

A job's message reaches the DLQ when ``maxReceiveCount`` deliveries did not finish it: the worker
crashed on it each time (OOM, a killed host) or could not record it. The worker writes ``failed``
itself when it sees an error on the last allowed delivery; :func:`sweep` covers the crashes, which
no worker lived to report (:func:`sweep_all` covers both queues' DLQs when there is a high-priority
queue).

A dead-lettered message belongs to one run of its job (:attr:`~twopass.queue.base.JobMessage.run`):
it stays in the DLQ after the sweep, and its job may be retried by its owner meanwhile, so the sweep
fails a job only while it is still in the message's run (a conditional write in the store).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from twopass.aws import client, translate_errors
from twopass.jobs.base import JobStore
from twopass.queue.base import JobMessage, MessageFormatError

logger = logging.getLogger(__name__)

#: The error of a job the sweep marked failed.
DEAD_LETTERED = "dead-lettered: no delivery of this job finished (worker crashed or timed out)"


def dead_letter_queue_url(queue_url: str) -> str | None:
    """The DLQ named by ``queue_url``'s redrive policy (so nothing needs configuring twice)."""
    sqs = client("sqs")
    with translate_errors("find the dead-letter queue"):
        attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]).get("Attributes", {})
        policy = attrs.get("RedrivePolicy")
        if not policy:
            return None
        arn = json.loads(policy)["deadLetterTargetArn"]
        _, _, _, _, account, name = arn.split(":", 5)
        return str(sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"])


def receive_dead_letters(queue_url: str, visibility: int) -> list[dict[str, Any]]:
    out = client("sqs").receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=1,
        VisibilityTimeout=visibility,
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
        MessageAttributeNames=["All"],
    )
    messages: list[dict[str, Any]] = out.get("Messages", [])
    return messages


@translate_errors("dead-letter sweep")
def sweep(dlq_url: str, store: JobStore, *, max_messages: int = 100, visibility: int = 300) -> int:
    """Mark every dead-lettered job that is still open, in the run its message was sent for, as failed;
    returns how many were marked.

    Messages stay in the DLQ (hidden for ``visibility`` seconds so one sweep sees each once): the
    operator decides between a redrive (``twopass redrive``) and a purge. Every later sweep meets them again, which
    is harmless: a job failed by its message is final, and a retried one is in a later run.
    """
    marked = seen = 0
    while seen < max_messages:
        batch = receive_dead_letters(dlq_url, visibility)
        if not batch:
            break
        for msg in batch:
            seen += 1
            try:
                job = JobMessage.decode(msg["Body"])
            except MessageFormatError:
                continue
            if store.fail(job.job_id, DEAD_LETTERED, run=job.run):
                marked += 1
                logger.warning("job %s dead-lettered; marked failed", job.job_id)
    return marked


def sweep_all(dlq_urls: Sequence[str], store: JobStore, *, max_messages: int = 100, visibility: int = 300) -> int:
    """:func:`sweep` each dead-letter queue (the normal and the high-priority one); how many jobs were marked."""
    return sum(sweep(url, store, max_messages=max_messages, visibility=visibility) for url in dlq_urls)

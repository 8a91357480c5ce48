"""``twopass redrive``: move dead-lettered jobs back to their queue after a fix.

SQS's "start message move task", done by hand with receive/send/delete so it works everywhere (moto
cannot run the real one). A dead-lettered message belongs to one run of its job
(:attr:`~twopass.queue.base.JobMessage.run`); its owner may have retried the job since, so a message
of an earlier run is dropped instead of sent again, and a job that succeeded meanwhile is never reopened.
"""

from __future__ import annotations

from dataclasses import dataclass

from twopass.aws import client, translate_errors
from twopass.jobs.base import JobStatus, JobStore
from twopass.queue.base import JobMessage, MessageFormatError
from twopass.worker.chores.deadletter import dead_letter_queue_url, receive_dead_letters

__all__ = ["RedriveReport", "dead_letter_queue_url", "redrive"]


@dataclass
class RedriveReport:
    moved: int = 0
    reopened: int = 0
    dropped_done: int = 0
    #: Messages of an earlier run of a job its owner retried since: sending them again would only
    #: run the job twice, and their dead letter says nothing about the current run.
    dropped_stale: int = 0
    unreadable: int = 0


@translate_errors("dead-letter redrive")
def redrive(dlq_url: str, queue_url: str, store: JobStore, *, max_messages: int | None = None) -> RedriveReport:
    """Move DLQ messages back to the job queue, reopening their failed jobs.

    A job that has succeeded meanwhile is never reopened: its message is simply dropped, and so is a
    message of an earlier run than the job's (its owner retried it). Each message is sent to the
    queue before it is deleted from the DLQ, so a crash mid-way duplicates at worst (harmless),
    never loses.
    """
    report = RedriveReport()
    sqs = client("sqs")
    while max_messages is None or _handled(report) < max_messages:
        batch = receive_dead_letters(dlq_url, 60)
        if not batch:
            break
        for msg in batch:
            try:
                job = JobMessage.decode(msg["Body"])
            except MessageFormatError:
                report.unreadable += 1  # not ours: leave it for a person to look at
                continue
            record = store.get(job.job_id)
            if record is not None and record.status is JobStatus.SUCCEEDED:
                report.dropped_done += 1
            elif record is not None and job.run < record.run:
                report.dropped_stale += 1
            else:
                if store.reopen(job.job_id):
                    report.reopened += 1
                attributes = msg.get("MessageAttributes") or {}
                sqs.send_message(QueueUrl=queue_url, MessageBody=msg["Body"], MessageAttributes=attributes)
                report.moved += 1
            sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=msg["ReceiptHandle"])
    return report


def _handled(report: RedriveReport) -> int:
    return report.moved + report.dropped_done + report.dropped_stale + report.unreadable

"""Reading and controlling a caller's own jobs: one job, a page of them, cancel, retry."""

from __future__ import annotations

from twopass.api.intake import JobIntake
from twopass.exceptions import DependencyError, EnqueueError, JobNotFoundError
from twopass.jobs.base import (
    DEFAULT_PAGE,
    RETRYABLE_STATUSES,
    ImageGoneError,
    JobFinalError,
    JobNotRetryableError,
    JobRecord,
    JobStatus,
)
from twopass.queue.base import JobMessage


class JobControl:
    """An owner's view of the job store: another owner's job is as unknown as a missing one."""

    def __init__(self, intake: JobIntake) -> None:
        self.intake = intake
        self.store = intake.store

    def job(self, job_id: str, owner: str) -> JobRecord:
        """The caller's own job; another owner's job is as unknown as a missing one."""
        record = self.store.get(job_id)
        if record is None or record.owner != owner:
            raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
        return record

    def jobs(
        self, owner: str, *, status: JobStatus | None = None, limit: int = DEFAULT_PAGE, cursor: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """A page of the caller's own jobs, newest first, and the cursor of the next page."""
        return self.store.list_jobs(owner, status=status, limit=limit, cursor=cursor)

    def cancel(self, job_id: str, owner: str) -> JobRecord:
        """Cancel the caller's queued or running job; the cancelled record.

        A worker that meets the job later skips it, and one running it has its result refused by the
        store. Raises :class:`JobFinalError` when the job had already ended.
        """
        record = self.job(job_id, owner)
        if record.final or not self.store.cancel(job_id):
            # Either it was final when read, or it became final in between (a worker finished it).
            now = self.job(job_id, owner)
            raise JobFinalError(f"job {job_id} has already ended ({now.status.value}); there is nothing to cancel")
        return self.job(job_id, owner)

    def retry(self, job_id: str, owner: str) -> JobRecord:
        """Queue the caller's failed, expired or cancelled job again, under the same id.

        Only a job whose image is still kept in the payload bucket can run again: raises
        :class:`ImageGoneError` otherwise, :class:`JobNotRetryableError` for a job in another state.
        """
        record = self.job(job_id, owner)
        if record.status not in RETRYABLE_STATUSES:
            state = "has succeeded" if record.status is JobStatus.SUCCEEDED else f"is {record.status.value}"
            raise JobNotRetryableError(f"job {job_id} {state}: only failed, expired and cancelled jobs can be retried")
        if not record.image_ref or not self.intake.payloads.exists(record.image_ref):
            raise ImageGoneError(f"job {job_id}'s image is no longer kept, so it cannot run again; submit it anew")
        if not self.store.retry(job_id):
            now = self.job(job_id, owner)
            raise JobNotRetryableError(f"job {job_id} is {now.status.value} now: it changed while being retried")
        self._requeue(record)
        return self.job(job_id, owner)

    def _requeue(self, record: JobRecord) -> None:
        """Send a retried job's message again; raises :class:`EnqueueError` (the job failed) when it cannot."""
        message = JobMessage(
            job_id=record.job_id,
            image_ref=record.image_ref,
            context=dict(record.context or {}),
            priority=record.priority,
        )
        try:
            self.intake.publisher_for(record.priority).publish(message)
        except DependencyError as exc:
            # Queued with no message would wait for ever: record why it did not run instead.
            self.intake.abandon(record.job_id, None, f"could not enqueue the retry: {exc}")
            raise EnqueueError(f"could not enqueue the retry of job {record.job_id}: {exc}") from exc

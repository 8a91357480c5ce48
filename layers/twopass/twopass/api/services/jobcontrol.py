"""Reading and controlling a caller's own jobs: one job, a page of them, cancel, retry.

A retry queues the job's image again by its reference, so it checks first what it re-queues: the
object is still there, within the size limit, and (for an upload) still the image the job was
accepted with. A cancelled job's inline image has no reference until a worker meets its message and
keeps it: until then a retry is answered 409 ``image_pending`` with ``Retry-After``, so a retry right
after a cancel waits for it rather than being told the image is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twopass.api.services.intake import JobIntake
from twopass.exceptions import DependencyError, EnqueueError, JobNotFoundError, MissingObjectError
from twopass.jobs.base import (
    DEFAULT_PAGE,
    RETRYABLE_STATUSES,
    ImageGoneError,
    JobFinalError,
    JobNotRetryableError,
    JobRecord,
    JobStatus,
)
from twopass.payloads import ImagePendingError
from twopass.queue.base import JobMessage

#: Seconds a client is told to wait before asking again for a job whose image is on its way.
IMAGE_PENDING_RETRY_AFTER = 1


class JobControl:
    """An owner's view of the job store: another owner's job is as unknown as a missing one."""

    def __init__(self, intake: JobIntake, clock: Callable[[], float] = time.time) -> None:
        self.intake = intake
        self.store = intake.store
        self._clock = clock

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

        Only a job whose image is still kept in the payload bucket, unchanged and within the size limit,
        can run again: raises :class:`ImagePendingError` while a worker may still keep it,
        :class:`ImageGoneError` once it is gone, :class:`~twopass.payloads.ImageChangedError` or
        :class:`~twopass.exceptions.ImageTooLargeError` for an object replaced since, and
        :class:`JobNotRetryableError` for a job in another state.
        """
        record = self.job(job_id, owner)
        if record.status not in RETRYABLE_STATUSES:
            state = "has succeeded" if record.status is JobStatus.SUCCEEDED else f"is {record.status.value}"
            raise JobNotRetryableError(f"job {job_id} {state}: only failed, expired and cancelled jobs can be retried")
        gone = f"job {job_id}'s image is no longer kept, so it cannot run again; submit it anew"
        if not record.image_ref:
            if self._image_on_its_way(record):
                raise ImagePendingError(
                    f"job {job_id}'s image is on its way to the payload bucket (a worker keeps it for a retry); "
                    f"retry in {IMAGE_PENDING_RETRY_AFTER} s"
                )
            raise ImageGoneError(gone)
        try:
            self.intake.payloads.check(record.image_ref, self._max_bytes())
        except MissingObjectError:
            raise ImageGoneError(gone) from None
        if not self.store.retry(job_id):
            now = self.job(job_id, owner)
            raise JobNotRetryableError(f"job {job_id} is {now.status.value} now: it changed while being retried")
        self._requeue(record)
        return self.job(job_id, owner)

    def _max_bytes(self) -> int:
        """The largest image any job may have: the uploads' limit (inline images are smaller)."""
        settings = self.intake.settings
        return max(settings.upload_max_bytes, settings.max_image_bytes)

    def _image_on_its_way(self, record: JobRecord) -> bool:
        """Whether a worker may still keep the inline image of this job that has no reference yet.

        A worker keeps a cancelled job's image when it meets the job's message, which may wait in the
        queue up to the queue's retention. A failed or expired job's image is kept as its final state is
        written, so one without a reference has none to come; nor has a service without a payload bucket.
        """
        settings = self.intake.settings
        if record.status is not JobStatus.CANCELLED or not settings.payload_bucket:
            return False
        queued_at = max([record.created_at, *(float(h.get("retried_at", 0)) for h in record.history)])
        return self._clock() < queued_at + settings.queue_retention_seconds

    def _requeue(self, record: JobRecord) -> None:
        """Send a retried job's message again; raises :class:`EnqueueError` (the job failed) when it cannot."""
        message = JobMessage(
            job_id=record.job_id,
            image_ref=record.image_ref,
            context=dict(record.context or {}),
            priority=record.priority,
            run=record.run + 1,  # ``record`` was read before the retry: this is the run it started
        )
        try:
            self.intake.publisher_for(record.priority).publish(message)
        except DependencyError as exc:
            # Queued with no message would wait for ever: record why it did not run instead.
            self.intake.abandon(record.job_id, None, f"could not enqueue the retry: {exc}")
            raise EnqueueError(f"could not enqueue the retry of job {record.job_id}: {exc}") from exc

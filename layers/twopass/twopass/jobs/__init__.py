"""Job records: their lifecycle and where they are kept."""

from twopass.jobs.base import FINAL_STATUSES, JobRecord, JobStatus, JobStore, WorkerBeat, new_job_id

__all__ = ["FINAL_STATUSES", "JobRecord", "JobStatus", "JobStore", "WorkerBeat", "new_job_id"]

"""Job lifecycle transitions in DynamoDB, each one conditional write (``retry``: a read, then one).

A final write that owes its completion event (see :meth:`~twopass.jobs.base.JobStore.message_held`)
records it in the same write: ``event_owed`` (a token) and ``pending`` set to the job's owed shard,
which puts the job in partitions of the sparse ``pending-created`` index of their own, where the
reconciler looks for events still owed. Publishing the event clears both (:meth:`settle_event`).
"""

from __future__ import annotations

import time
from typing import Any

from twopass.exceptions import ConditionFailedError
from twopass.jobs.base import RETRYABLE_STATUSES, JobRecord, Start
from twopass.jobs.dynamo.codec import job_record, owed_shard, to_dynamo
from twopass.jobs.dynamo.table import DynamoTable

#: Tries of a retry's read-then-conditional-write before giving up to a concurrent change.
_RETRY_TRIES = 3
_OPEN = "attribute_exists(job_id) AND #s IN (:queued, :running)"
_QUEUED = "attribute_exists(job_id) AND #s = :queued"


class DynamoLifecycle(DynamoTable):
    """start → succeed / fail / cancel / expire, and back to queued (reopen, retry)."""

    def start(self, job_id: str, worker_id: str) -> JobRecord | None:
        now = time.time()
        # A queued job past its deadline is never started; a running one (a redelivery) already was.
        in_time = "attribute_not_exists(deadline_at) OR deadline_at > :now"
        attrs = self._update(
            job_id,
            "SET #s = :running, started_at = :now, updated_at = :now, worker = :w ADD attempts :one REMOVE pending",
            f"attribute_exists(job_id) AND (#s = :running OR (#s = :queued AND ({in_time})))",
            {":running": "running", ":queued": "queued", ":now": now, ":w": worker_id, ":one": 1},
        )
        return None if attrs is None else job_record(attrs)

    def _finish(
        self,
        job_id: str,
        sets: str,
        condition: str,
        values: dict[str, Any],
        names: dict[str, str],
        start: Start | None = None,
    ) -> bool:
        """A conditional write of a final state: ``sets`` plus the timestamps, out of the never-started
        part of the pending index (into its owed part when the write owes the event).

        With ``start``, the write also does what :meth:`start` does, under its deadline condition.
        """
        values = {**values, ":now": time.time(), ":one": 1}
        removed = ["pending"]
        token = self._outbox_token()
        if token is not None:
            sets += ", event_owed = :owed, pending = :owedp"
            values.update({":owed": token, ":owedp": owed_shard(job_id)})
            removed = []
        if "#e = " not in sets:
            removed.append("#e")
        remove = f" REMOVE {', '.join(removed)}" if removed else ""
        adds = "final_writes :one"
        if start is not None:
            sets += ", started_at = :started, worker = :w"
            adds += ", attempts :one"
            values.update({":started": start.at, ":w": start.worker_id, ":running": "running"})
            in_time = "#s = :running OR attribute_not_exists(deadline_at) OR deadline_at > :started"
            condition = f"({condition}) AND ({in_time})"
        expression = f"SET {sets}, finished_at = :now, updated_at = :now{remove} ADD {adds}"
        names = {**names, "#e": "error"} if "#e" in expression else names
        attrs = self._update(job_id, expression, condition, values, names)
        if attrs is None:
            return False
        self._announce(job_record(attrs))
        return True

    def succeed(self, job_id: str, result: dict[str, Any], *, start: Start | None = None) -> bool:
        values = {":done": "succeeded", ":queued": "queued", ":running": "running", ":result": result}
        return self._finish(job_id, "#s = :done, #r = :result", _OPEN, values, {"#r": "result"}, start)

    def fail(
        self,
        job_id: str,
        error: str,
        *,
        only_if_queued: bool = False,
        start: Start | None = None,
        run: int | None = None,
    ) -> bool:
        values: dict[str, Any] = {":failed": "failed", ":queued": "queued", ":error": error[:2000]}
        condition = _QUEUED
        if not only_if_queued:
            values[":running"] = "running"
            condition = _OPEN
        if run is not None:
            # The run is how many retries ``history`` holds; items written before it existed have none.
            values[":run"] = run
            in_run = "size(history) = :run" + (" OR attribute_not_exists(history)" if run == 0 else "")
            condition = f"{condition} AND ({in_run})"
        return self._finish(job_id, "#s = :failed, #e = :error", condition, values, {}, start)

    def cancel(self, job_id: str) -> bool:
        values = {":cancelled": "cancelled", ":queued": "queued", ":running": "running"}
        return self._finish(job_id, "#s = :cancelled", _OPEN, values, {})

    def expire(self, job_id: str, reason: str) -> bool:
        values = {":expired": "expired", ":queued": "queued", ":error": reason[:2000]}
        return self._finish(job_id, "#s = :expired, #e = :error", _QUEUED, values, {})

    def settle_event(self, job_id: str, token: str) -> bool:
        # Out of the owed partitions too; conditional, so a newer final state's debt is never cleared.
        try:
            self._call(
                "update_item",
                Key={"job_id": {"S": job_id}},
                UpdateExpression="REMOVE event_owed, pending",
                ConditionExpression="event_owed = :owed",
                ExpressionAttributeValues={":owed": to_dynamo(token)},
            )
        except ConditionFailedError:
            return False
        return True

    def reopen(self, job_id: str) -> bool:
        attrs = self._update(
            job_id,
            "SET #s = :queued, updated_at = :now REMOVE #e, finished_at, final_writes ADD redrives :one",
            "attribute_exists(job_id) AND #s = :failed",
            {":queued": "queued", ":failed": "failed", ":now": time.time(), ":one": 1},
            names={"#e": "error"},
        )
        return attrs is not None

    def keep_image(self, job_id: str, ref: str) -> bool:
        attrs = self._update(
            job_id,
            "SET image_ref = :ref",
            "attribute_exists(job_id) AND attribute_not_exists(image_ref) AND #s <> :succeeded",
            {":ref": ref, ":succeeded": "succeeded"},
        )
        return attrs is not None

    def retry(self, job_id: str) -> bool:
        # The ended run's outcome goes into `history`, and an update expression cannot copy attributes
        # into a new list element: read it, then write only if nothing changed in between.
        for _ in range(_RETRY_TRIES):
            record = self.get(job_id)
            if record is None or record.status not in RETRYABLE_STATUSES:
                return False
            if record.event_owed:  # the ended run's event must not be lost to the new run
                self.reannounce(record)
            if self._requeue(record):
                return True
        return False

    def _requeue(self, record: JobRecord) -> bool:
        """Queue an ended job again, its last run kept in ``history``, if it is still as read."""
        now = time.time()
        attrs = self._update(
            record.job_id,
            "SET #s = :queued, updated_at = :now, history = list_append(if_not_exists(history, :none), :entry) "
            "REMOVE #e, finished_at, deadline_at, #r, final_writes",
            "attribute_exists(job_id) AND #s = :was AND updated_at = :seen",
            {
                ":queued": "queued",
                ":now": now,
                ":none": [],
                ":entry": [record.outcome(now)],
                ":was": record.status.value,
                ":seen": record.updated_at,
            },
            {"#e": "error", "#r": "result"},
        )
        return attrs is not None

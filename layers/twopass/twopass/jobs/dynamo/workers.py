"""Worker heartbeats: one item under the reserved key ``#workers``, one top-level attribute per worker,
so concurrent workers update it without a read-modify-write."""

from __future__ import annotations

import time
from typing import Any

from twopass.jobs.base import WorkerBeat
from twopass.jobs.dynamo.codec import from_dynamo, to_dynamo
from twopass.jobs.dynamo.table import DynamoTable

#: Key of the heartbeats item; never a valid job id.
WORKERS_KEY = "#workers"
_WORKER_PREFIX = "w_"
#: How long the heartbeats item outlives its last beat.
_BEATS_TTL = 86400


class DynamoWorkers(DynamoTable):
    """Heartbeats: :meth:`beat`, :meth:`forget_worker`, :meth:`workers`."""

    def beat(self, worker_id: str, info: dict[str, Any]) -> None:
        now = time.time()
        self._call(
            "update_item",
            Key={"job_id": {"S": WORKERS_KEY}},
            UpdateExpression="SET #w = :beat, expires_at = :exp",
            ExpressionAttributeNames={"#w": _WORKER_PREFIX + worker_id},
            ExpressionAttributeValues={
                ":beat": to_dynamo({**info, "at": now}),
                ":exp": to_dynamo(int(now + _BEATS_TTL)),
            },
        )

    def forget_worker(self, worker_id: str) -> None:
        self._call(
            "update_item",
            Key={"job_id": {"S": WORKERS_KEY}},
            UpdateExpression="REMOVE #w",
            ExpressionAttributeNames={"#w": _WORKER_PREFIX + worker_id},
        )

    def workers(self) -> list[WorkerBeat]:
        beats = []
        for name, attr in (self._get_item(WORKERS_KEY) or {}).items():
            if name.startswith(_WORKER_PREFIX):
                info = from_dynamo(attr)
                beats.append(WorkerBeat(name.removeprefix(_WORKER_PREFIX), float(info.pop("at", 0.0)), info))
        return sorted(beats, key=lambda b: b.at, reverse=True)

"""DynamoDB job store: one item per job keyed by ``job_id``, conditional writes for every transition.

The store is composed of parts in :mod:`twopass.jobs.dynamo`, one job each: the attribute codec
(``codec``), the lifecycle transitions (``lifecycle``), job creation with its idempotency key and
batches (``records``), the index queries (``index``) and worker heartbeats (``workers``).

Worker heartbeats share the table under the reserved key ``#workers`` (never a valid job id), one
top-level attribute per worker, so concurrent workers update it without read-modify-write.

Two attributes exist for operators rather than for the code paths:

* ``final_writes`` counts writes of a final state; the conditional transitions keep it at 1, so an
  item with ``final_writes > 1`` would show a broken invariant (the chaos test checks it).
* ``pending`` (a shard number) marks a job created and never started; it feeds the sparse
  ``pending-created`` index the reconciler reads, and is removed by the first start or final write.
  A final write that owes its completion event sets it to ``owed-<shard>`` instead (with the
  ``event_owed`` token), other partitions of the same index, until the event is published.

Owners list their jobs through the ``owner-created`` index (``owner``, ``created_at``): only job
items carry ``owner``, so idempotency keys and heartbeats stay out of it.
"""

from __future__ import annotations

from twopass.jobs.dynamo.index import MAX_LIST_QUERIES, OWNER_INDEX, PENDING_INDEX, DynamoIndexes
from twopass.jobs.dynamo.lifecycle import DynamoLifecycle
from twopass.jobs.dynamo.records import DynamoRecords
from twopass.jobs.dynamo.workers import WORKERS_KEY, DynamoWorkers

__all__ = ["MAX_LIST_QUERIES", "OWNER_INDEX", "PENDING_INDEX", "WORKERS_KEY", "DynamoJobStore"]


class DynamoJobStore(DynamoLifecycle, DynamoRecords, DynamoIndexes, DynamoWorkers):
    """Job records in the template's ``JobsTable``; ``client`` defaults to the shared boto3 client.

    ``DynamoJobStore(table_name, ttl_seconds=7 days, *, client=None)``.
    """

"""``POST /batches``: many images in one call, the fast model run over them as one batch.

Each item is checked on its own: one that is not valid base64, not an image, too big, or names an
upload that cannot be used becomes an item error (``{"index", "error", "detail"}``) and never fails
the others. The valid images are decoded, then classified in one ``session.run`` (batched inference,
rather than one call per image), and each becomes a job as ``POST /predict`` makes it: the record
first, the cascade's choice, then the queue message. An ``upload_id`` item is read from the payload
bucket as ``POST /predict {"upload_id"}`` reads it (its object becomes the job's claim check, and the
same upload gives the same job: within the batch, and in any later request). The batch record,
holding every item's job id or error in input order, is written after the jobs' records and before
any message is sent: a batch that could not be recorded leaves no job to run (its jobs are marked
failed) and answers 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twopass.api.body import decode_image_data
from twopass.api.context import ApiContext
from twopass.api.errors import HTTPProblemError, problem_for
from twopass.api.schemas import PredictResponse, iso
from twopass.api.usecases.control import JobOptions
from twopass.api.usecases.submit import Caller, overloaded
from twopass.cascade import Route, SlowMode
from twopass.exceptions import (
    DependencyError,
    DependencyTimeoutError,
    IdempotencyConflictError,
    RequestInProgressError,
    TwopassError,
)
from twopass.jobs.base import (
    FINAL_STATUSES,
    MAX_BATCH_ITEMS,
    BatchRecord,
    IdempotencyRecord,
    JobRecord,
    JobStatus,
    new_batch_id,
    new_job_id,
)
from twopass.models.runtime import Prediction
from twopass.observability.metrics import Metric
from twopass.uploads import UploadNotFoundError, UploadPendingError, Uploads, UploadTypeError

logger = logging.getLogger(__name__)

#: Each status a batch's counts report, the final ones and ``refused`` (items that never became jobs) included.
COUNTED = ("queued", "running", "succeeded", "failed", "cancelled", "expired", "refused")


@dataclass
class Item:
    """One item of a batch as it goes through the fast path."""

    index: int
    data: bytes = b""
    error: tuple[str, str] | None = None
    #: An upload item: its id, then (once read) its object's reference and its idempotency claim.
    upload_id: str | None = None
    image_ref: str | None = None
    claim: IdempotencyRecord | None = None
    #: The index of an earlier item naming the same upload: this one gets that item's job.
    same_as: int | None = None
    tensor: np.ndarray | None = field(default=None, repr=False)
    prediction: Prediction | None = None
    inference_ms: float = 0.0
    record: JobRecord | None = None
    answer: dict[str, Any] | None = None
    #: An upload's digest, taken when it was read (its bytes are let go once decoded).
    upload_sha256: str | None = None

    def sha256(self) -> str:
        """The image's sha256 (the result cache's key)."""
        return self.upload_sha256 or hashlib.sha256(self.data).hexdigest()

    @property
    def live(self) -> bool:
        """Still on its way to a job: no error, no answer (a replayed upload has one), not a repeat."""
        return self.error is None and self.answer is None and self.same_as is None

    @property
    def job_id(self) -> str | None:
        if self.record is not None:
            return self.record.job_id
        job_id = self.answer.get("job_id") if self.answer is not None else None  # a replayed upload's job
        return str(job_id) if job_id else None

    def refuse(self, exc: TwopassError) -> None:
        _, code, detail = problem_for(exc)
        self.error = (code, detail)

    def as_error(self) -> dict[str, Any]:
        assert self.error is not None
        return {"index": self.index, "error": self.error[0], "detail": self.error[1]}


def parse_items(raw: list[Any], max_image_bytes: int) -> list[Item]:
    """Each raw item → an :class:`Item` with its image bytes or its error (never raises for one item)."""
    items = []
    uploads: dict[str, int] = {}
    for index, entry in enumerate(raw):
        item = Item(index)
        items.append(item)
        if not isinstance(entry, dict) or len(entry) != 1 or not ({"image_data", "upload_id"} & set(entry)):
            item.error = ("invalid_item", 'an item is {"image_data": "<base64>"} or {"upload_id": "<id>"}, alone')
            continue
        value = next(iter(entry.values()))
        if not isinstance(value, str):
            item.error = ("invalid_item", f"{next(iter(entry))} must be a string")
            continue
        if "upload_id" in entry:
            item.upload_id = value
            if value in uploads:
                item.same_as = uploads[value]
            else:
                uploads[value] = index
            continue
        try:
            item.data = decode_image_data(value, max_image_bytes)
        except TwopassError as exc:
            item.refuse(exc)
    return items


#: Uploaded images read from the bucket at once: each is decoded as soon as it is read and its bytes
#: dropped, so a batch of 100 large uploads holds a few images in memory, not 100.
UPLOAD_READS_AT_ONCE = 4
#: A batch does the work of many requests (up to 100 reads and writes): it gets this many of the
#: request deadline, still inside API Gateway's 29 s with the default 6 s.
BATCH_DEADLINES = 4


async def submit_batch(
    context: ApiContext, raw: list[Any], caller: Caller, options: JobOptions, slow: SlowMode = SlowMode.AUTO
) -> dict[str, Any]:
    """Run the fast model over every valid item at once and queue a job for each; the batch's answer."""
    if not 1 <= len(raw) <= MAX_BATCH_ITEMS:
        raise HTTPProblemError(422, "validation_error", f"items: 1 to {MAX_BATCH_ITEMS} items, got {len(raw)}")
    deadline = context.settings.api_deadline_seconds * BATCH_DEADLINES
    try:
        async with asyncio.timeout(deadline):
            return await _submit_batch(context, raw, caller, options, slow)
    except TimeoutError:
        raise DependencyTimeoutError(f"the batch's backends did not answer within {deadline:g} s") from None


async def _submit_batch(
    context: ApiContext, raw: list[Any], caller: Caller, options: JobOptions, slow: SlowMode
) -> dict[str, Any]:
    service = context.service
    items = parse_items(raw, context.settings.max_image_bytes)
    reads = asyncio.Semaphore(UPLOAD_READS_AT_ONCE)
    await asyncio.gather(
        *(_read_upload(context, item, caller.owner, reads) for item in items if item.live and item.upload_id)
    )
    shed = False
    if slow is not SlowMode.NEVER and await overloaded(context):
        if options.rejects:
            retry_after = str(max(1, math.ceil(context.backlog.ttl)))
            raise HTTPProblemError(
                429,
                "overloaded",
                "the job backlog is over the service's limit; retry after the Retry-After delay, or leave out "
                "on_overload: reject to get the fast answers alone",
                headers={"Retry-After": retry_after},
            )
        shed = True
    await context.infer(_decode_and_classify, context, items)
    good = [item for item in items if item.live]
    batch_id = new_batch_id()
    if slow is SlowMode.NEVER or shed:
        for item in good:
            assert item.prediction is not None
            fast = item.prediction.result(service.fast_name, item.inference_ms)
            answer = PredictResponse.fast_only(fast) if slow is SlowMode.NEVER else PredictResponse.shed(fast)
            item.answer = answer.model_dump(mode="json", exclude_unset=True)
        _follow_repeats(items)
        _report(context, items, accepted=0)
        return {"batch_id": None, "items": [_item_body(item) for item in items]}
    deadline_at = options.deadline_at(context.settings)
    priority = service.intake.priority(options.priority)
    messages = await asyncio.gather(*(_record(context, item, caller, batch_id, deadline_at, priority) for item in good))
    recorded = [(item, message) for item, message in zip(good, messages, strict=True) if message is not None]
    _follow_repeats(items)
    batch = BatchRecord(batch_id, owner=caller.owner, items=[_stored(item) for item in items])
    try:
        await context.io(service.store.create_batch, batch)
    except DependencyError:
        reason = "the batch could not be recorded"
        await asyncio.gather(
            *(context.io(service.intake.abandon, i.record.job_id, i.claim, reason) for i, _ in recorded if i.record)
        )
        raise
    await asyncio.gather(*(_send(context, item, message, caller, slow) for item, message in recorded))
    _follow_repeats(items)
    _report(context, items, accepted=sum(1 for item, _ in recorded if item.answer is not None))
    return {"batch_id": batch_id, "items": [_item_body(item) for item in items]}


async def _read_upload(context: ApiContext, item: Item, owner: str, reads: asyncio.Semaphore) -> None:
    """An upload item's image, read from the bucket as ``POST /predict {"upload_id"}`` reads it; or the
    earlier answer of the upload's job (one upload, one job); or the item's error, with /predict's codes."""
    service = context.service
    uploads: Uploads | None = service.uploads
    upload_id = item.upload_id or ""
    if uploads is None:
        item.error = ("uploads_unavailable", "this service has no payload bucket, so it takes images inline only")
        return
    try:
        expires_at = await context.io(uploads.expires_at, owner, upload_id)
        claim = uploads.claim(owner, upload_id, service.idempotency.ttl_seconds)
        # Before the object is looked at: once its job has succeeded the worker has deleted it.
        if (earlier := await context.io(service.idempotency.replay, claim)) is not None:
            item.answer = earlier
            return
        upload = await context.io(uploads.locate, owner, upload_id, expires_at)
        async with reads:
            # The job's reference is pinned to these bytes: sent again, the upload cannot change what it sees.
            data, image_ref = await context.io(uploads.read, upload)
            item.upload_sha256 = hashlib.sha256(data).hexdigest()
            # Decoded now and the bytes let go: the tensor is a fraction of a large upload's size.
            item.tensor = await context.infer(service.decode, data, context.settings.upload_max_bytes)
    except UploadNotFoundError as exc:
        item.error = ("upload_not_found", str(exc))
        return
    except UploadPendingError as exc:
        item.error = ("upload_pending", str(exc))
        return
    except UploadTypeError as exc:
        item.error = ("unsupported_media_type", str(exc))
        return
    except TwopassError as exc:  # too big (413), in use by another request (409), S3 unavailable (503)
        item.refuse(exc)
        return
    item.image_ref, item.claim = image_ref, claim


def _follow_repeats(items: list[Item]) -> None:
    """An item naming an upload an earlier item named gets that item's job (or error), as a second use would."""
    for item in items:
        if item.same_as is not None:
            first = items[item.same_as]
            item.record, item.answer, item.error = first.record, first.answer, first.error


def _decode_and_classify(context: ApiContext, items: list[Item]) -> None:
    """Decode every valid item (each failure is that item's), then one batched run of the fast model."""
    service = context.service
    for item in items:
        if not item.live or item.tensor is not None:  # uploads were decoded as they were read
            continue
        try:
            item.tensor = service.decode(item.data)
        except TwopassError as exc:
            item.refuse(exc)
    decoded = [item for item in items if item.tensor is not None]
    if not decoded:
        return
    started = time.perf_counter()
    predictions = service.classifier.predict_batch([item.tensor for item in decoded if item.tensor is not None])
    # The batch's model time, shared out: what each image cost the fast model.
    each_ms = (time.perf_counter() - started) * 1000 / len(decoded)
    for item, prediction in zip(decoded, predictions, strict=True):
        item.prediction, item.inference_ms, item.tensor = prediction, each_ms, None


async def _record(
    context: ApiContext, item: Item, caller: Caller, batch_id: str, deadline_at: float | None, priority: str
) -> Any:
    """Write the item's job record; its queue message, or ``None`` (and the item's error) when refused."""
    service = context.service
    record = JobRecord(
        job_id=new_job_id(), owner=caller.owner, deadline_at=deadline_at, priority=priority, batch_id=batch_id
    )
    job_context = {"request_id": caller.request_id, "batch_id": batch_id}
    try:
        message = await context.io(
            service.intake.record_job, record, item.data, job_context, item.claim, item.image_ref
        )
    except IdempotencyConflictError:  # another request made this upload's job meanwhile: its answer is this one's
        assert item.claim is not None
        try:
            earlier = await context.io(service.idempotency.replay, item.claim)
            if earlier is None:
                raise RequestInProgressError("a request using this upload is in progress; retry shortly")
        except TwopassError as exc:
            item.refuse(exc)
            return None
        item.answer = earlier
        return None
    except TwopassError as exc:
        item.refuse(exc)
        return None
    item.record = record
    return message


async def _send(context: ApiContext, item: Item, message: Any, caller: Caller, slow: SlowMode) -> None:
    """The cascade's choice for a recorded item: answered by the fast model now, or its message sent."""
    service = context.service
    shortcuts = service.shortcuts
    assert item.record is not None and item.prediction is not None
    fast = item.prediction.result(service.fast_name, item.inference_ms)
    final = None
    try:
        if shortcuts.cascade.route(slow, item.prediction.probability) is Route.FAST:
            final = shortcuts.fast_final(fast)
            await context.io(shortcuts.answer_fast, item.record.job_id, final, item.claim)
        else:
            message = shortcuts.with_fast_answer(message, item.prediction, caller.owner, item.sha256)
            await context.io(service.intake.publish, message, item.claim)
    except TwopassError as exc:  # the job was marked failed by publish; the item says why
        item.refuse(exc)
        return
    answer = PredictResponse.build(item.record.job_id, fast, final=final)
    item.answer = answer.model_dump(mode="json", exclude_unset=True)
    if item.claim is not None:  # the upload's later uses answer this
        await context.io(service.idempotency.remember, item.claim, item.answer)


def _stored(item: Item) -> dict[str, Any]:
    """The item as the batch record keeps it: its job id, or its error."""
    if item.job_id is not None:
        return {"index": item.index, "job_id": item.job_id}
    return item.as_error()


def _item_body(item: Item) -> dict[str, Any]:
    if item.answer is not None:
        return {"index": item.index, **item.answer}
    if item.error is None:  # recorded, then its message failed without a TwopassError: never left silent
        item.error = ("enqueue_failed", "the job could not be queued")
    return item.as_error()


def _report(context: ApiContext, items: list[Item], *, accepted: int) -> None:
    refused = sum(1 for item in items if item.answer is None)
    logger.info("batch of %d: %d jobs, %d refused", len(items), accepted, refused)
    if context.metrics is None:
        return
    context.metrics.add(Metric.BATCH_ITEMS, len(items))
    context.metrics.add(Metric.BATCH_ITEMS_REFUSED, refused)
    context.metrics.add(Metric.JOBS_ACCEPTED, accepted)
    for item in items:
        if item.prediction is not None:
            context.metrics.add(Metric.FAST_INFERENCE_MS, item.inference_ms)
    context.metrics.flush()


def batch_status(batch: BatchRecord, jobs: dict[str, JobRecord]) -> dict[str, Any]:
    """``GET /batches/{id}``: counts by status, and every item (its job as ``GET /job`` shows it, or its error)."""
    from twopass.api.schemas import JobResponse

    counts = dict.fromkeys(COUNTED, 0)
    items: list[dict[str, Any]] = []
    for stored in batch.items:
        job_id = stored.get("job_id")
        record = jobs.get(str(job_id)) if job_id else None
        if record is None:
            counts["refused"] += 1
            if job_id:  # its record is gone (past its retention)
                stored = {"index": stored["index"], "error": "job_gone", "detail": f"job {job_id} no longer exists"}
            items.append(dict(stored))
            continue
        counts[record.status.value] += 1
        body = JobResponse.from_record(record).model_dump(mode="json", exclude_unset=True)
        items.append({"index": stored["index"], **body})
    jobs_total = sum(counts[s.value] for s in JobStatus)
    done = sum(counts[s.value] for s in FINAL_STATUSES)
    return {
        "batch_id": batch.batch_id,
        "created_at": iso(batch.created_at),
        "total": len(batch.items),
        "done": done == jobs_total,
        "counts": counts,
        "items": items,
    }

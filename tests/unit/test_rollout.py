"""Slow-model rollouts, agreement and the cache fill in the worker, against the in-memory queue and store."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from twopass.api.schemas import JobResponse
from twopass.cascade import FAST_CLASS_ID, FAST_LABEL, FAST_VERSION, IMAGE_SHA256, OWNER
from twopass.config import REPO_ROOT, Settings
from twopass.exceptions import ConfigError
from twopass.jobs.base import JobRecord, JobStatus
from twopass.jobs.cache import CacheKey, MemoryResultCache, image_digest
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.observability.metrics import Metric
from twopass.queue.base import JobMessage
from twopass.queue.memory import MemoryQueue
from twopass.worker.events import ObservedEvents
from twopass.worker.rollout import Rollout, SlowModels, agreement, canary_share
from twopass.worker.runner import Worker

SLOW = REPO_ROOT / "layers" / "models" / "slow"
SETTINGS = Settings().replace(
    max_batch_size=16, max_wait_ms=20, receivers=2, poll_wait_seconds=0.2, heartbeat_seconds=0.1
)


@pytest.fixture(scope="module")
def candidate() -> Classifier:
    """The fp16 export of the slow model: another version of the same model, as a rollout would bring."""
    return Classifier(SLOW / "efficientnet-lite2-fp16.onnx", top_k=5)


# -- the mode -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "percent"),
    [("", "off", 0), ("off", "off", 0), ("shadow", "shadow", 100), ("shadow:25", "shadow", 25),
     ("canary:10", "canary", 10), ("Canary:2.5", "canary", 2.5)],
)  # fmt: skip
def test_rollout_modes(text: str, kind: str, percent: float) -> None:
    mode = Rollout.parse(text)
    assert (mode.kind, mode.percent) == (kind, percent)


@pytest.mark.parametrize("text", ["canary", "canary:150", "blue-green", "shadow:-1", "canary:ten"])
def test_bad_rollout_modes_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="TWOPASS_ROLLOUT_MODE"):
        Rollout.parse(text)


def test_a_mode_without_a_candidate_is_refused(slow_classifier: Classifier) -> None:
    with pytest.raises(ConfigError, match="TWOPASS_CANDIDATE_SLOW_MODEL"):
        SlowModels.from_settings(SETTINGS.replace(rollout_mode="canary:5"), slow_classifier)
    # A candidate with the mode off is not even loaded.
    off = SlowModels.from_settings(SETTINGS.replace(candidate_slow_model="/no/such/model.onnx"), slow_classifier)
    assert off.candidate is None


def test_canary_share_is_stable_and_proportional() -> None:
    rng = random.Random(7)
    ids = [uuid.UUID(int=rng.getrandbits(128), version=4).hex for _ in range(20_000)]
    share = sum(canary_share(i, 10) for i in ids) / len(ids)
    assert share == pytest.approx(0.10, abs=0.01)
    assert [canary_share(i, 10) for i in ids[:50]] == [canary_share(i, 10) for i in ids[:50]]
    assert not any(canary_share(i, 0) for i in ids[:500]) and all(canary_share(i, 100) for i in ids[:500])


def test_agreement_reads_the_fast_answer_the_job_carried() -> None:
    assert agreement({FAST_CLASS_ID: "967"}, 967) is True
    assert agreement({FAST_CLASS_ID: "282"}, 285) is False
    assert agreement({}, 285) is None
    assert agreement({FAST_CLASS_ID: "junk"}, 285) is None


# -- in the worker ----------------------------------------------------------------------------------------


class Harness:
    def __init__(self, worker: Worker, queue: MemoryQueue, store: MemoryJobStore) -> None:
        self.worker, self.queue, self.store = worker, queue, store
        self.thread = threading.Thread(target=worker.run, daemon=True)

    def submit(self, image: bytes, job_id: str | None = None, **context: str) -> str:
        job_id = job_id or uuid.uuid4().hex
        self.store.create(JobRecord(job_id=job_id))
        self.queue.publish(JobMessage(job_id=job_id, image=image, context=dict(context)))
        return job_id

    def wait_final(self, job_ids: Sequence[str], timeout: float = 60) -> list[JobRecord]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = [self.store.get(j) for j in job_ids]
            if all(r is not None and r.final for r in records):
                return [r for r in records if r is not None]
            time.sleep(0.02)
        raise AssertionError(f"jobs not final after {timeout}s")


@pytest.fixture
def harness(slow_classifier: Classifier) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        settings = SETTINGS.replace(**kwargs.pop("settings", {}))
        queue, store = MemoryQueue(visibility=30), MemoryJobStore()
        worker = Worker(slow_classifier, queue, store, settings, worker_id="rollout-test", **kwargs)
        made.append(Harness(worker, queue, store))
        made[-1].thread.start()
        return made[-1]

    yield make
    for h in made:
        h.worker.stop()
        h.thread.join(timeout=30)


def fast_context(fast: Classifier, image: bytes) -> dict[str, str]:
    prediction = fast.predict(fast.tensor(image, max_pixels=40_000_000))
    return {FAST_CLASS_ID: str(prediction.class_ids[0]), FAST_LABEL: prediction.label,
            FAST_VERSION: fast.card.version}  # fmt: skip


def test_every_slow_result_records_agreement_and_its_version(
    harness: Callable[..., Harness], fast_classifier: Classifier, slow_classifier: Classifier, photo: Any
) -> None:
    h = harness()
    images = {name: photo(name) for name in ("coffee.jpg", "chelsea.jpg", "astronaut.jpg")}
    ids = {name: h.submit(data, **fast_context(fast_classifier, data)) for name, data in images.items()}
    unknown = h.submit(images["coffee.jpg"])  # a message from before the fast answer travelled
    records = dict(zip([*ids, "unknown"], h.wait_final([*ids.values(), unknown]), strict=True))
    for record in records.values():
        assert record.status is JobStatus.SUCCEEDED and record.result is not None
        assert record.result["answered_by"] == "slow"
        assert record.result["version"] == slow_classifier.card.version
    # The cards: both say espresso on coffee; on chelsea fast says tiger cat, slow Egyptian cat.
    assert records["coffee.jpg"].result["agreement"] is True  # type: ignore[index]
    assert records["chelsea.jpg"].result["agreement"] is False  # type: ignore[index]
    assert records["unknown"].result["agreement"] is None  # type: ignore[index]
    body = JobResponse.from_record(records["chelsea.jpg"]).model_dump(mode="json")
    assert body["agreement"] is False and body["answered_by"] == "slow"
    assert body["model_version"] == slow_classifier.card.version


def test_canary_serves_its_share_of_200_jobs(
    harness: Callable[..., Harness], slow_classifier: Classifier, candidate: Classifier, cat_jpeg: bytes
) -> None:
    h = harness(models=SlowModels(slow_classifier, candidate, Rollout("canary", 25)))
    rng = random.Random(14)  # fixed job ids: the share is exact for them, and stable from run to run
    ids = [uuid.UUID(int=rng.getrandbits(128), version=4).hex for _ in range(200)]
    for job_id in ids:
        h.submit(cat_jpeg, job_id)
    records = h.wait_final(ids, timeout=240)
    versions = [r.result["version"] for r in records if r.result is not None]
    assert len(versions) == 200
    served = versions.count(candidate.card.version)
    assert served + versions.count(slow_classifier.card.version) == 200
    assert served / 200 == pytest.approx(0.25, abs=0.06)  # binomial sd at 200 jobs is 3 points
    # Exactly the jobs the hash picks, so a redelivered job meets the same model again.
    assert [r.result["version"] == candidate.card.version for r in records] == [  # type: ignore[index]
        canary_share(i, 25) for i in ids
    ]
    body = JobResponse.from_record(next(r for r in records if canary_share(r.job_id, 25))).model_dump()
    assert body["model_version"] == candidate.card.version


def test_shadow_records_the_candidate_without_serving_it(
    harness: Callable[..., Harness], slow_classifier: Classifier, candidate: Classifier, photo: Any
) -> None:
    h = harness(models=SlowModels(slow_classifier, candidate, Rollout("shadow", 100)))
    ids = [h.submit(photo(n)) for n in ("coffee.jpg", "chelsea.jpg", "astronaut.jpg")]
    for record in h.wait_final(ids):
        assert record.result is not None
        assert record.result["version"] == slow_classifier.card.version  # served by the current model
        shadow = record.result["shadow"]
        assert shadow["version"] == candidate.card.version and shadow["model"] == candidate.name
        # fp16 agrees with fp32 on every bundled photo (its card).
        assert shadow["agreement"] is True and shadow["label"] == record.result["label"]
        body = JobResponse.from_record(record).model_dump(mode="json")
        assert "shadow" not in body["slow"] and "shadow" not in body
        assert body["model_version"] == slow_classifier.card.version


def test_shadow_samples_a_share_of_batches(slow_classifier: Classifier, candidate: Classifier, cat_jpeg: bytes) -> None:
    models = SlowModels(slow_classifier, candidate, Rollout("shadow", 30), rng=random.Random(3))
    tensor = slow_classifier.tensor(cat_jpeg, max_pixels=40_000_000)
    message = JobMessage(job_id="a" * 32, image=cat_jpeg)
    shadowed = sum(models.predict([message], [tensor])[0].shadow is not None for _ in range(40))
    assert 4 <= shadowed <= 22  # 12 expected; the seeded sampler makes it the same every run


def test_a_candidate_with_other_preprocessing_gets_its_own_input(
    harness: Callable[..., Harness], slow_classifier: Classifier, fast_classifier: Classifier, photo: Any
) -> None:
    # The fast model (224 px, int8) as a stand-in candidate whose input differs from the slow model's (260 px).
    h = harness(models=SlowModels(slow_classifier, fast_classifier, Rollout("canary", 100), image=lambda m: m.image))
    (record,) = h.wait_final([h.submit(photo("coffee.jpg"))])
    assert record.result is not None
    assert record.result["model"] == "efficientnet-lite0" and record.result["label"] == "espresso"
    assert record.result["version"] == fast_classifier.card.version


def test_the_worker_loads_the_candidate_once_from_settings(
    harness: Callable[..., Harness], slow_classifier: Classifier, cat_jpeg: bytes
) -> None:
    settings = {"candidate_slow_model": str(SLOW / "efficientnet-lite2-fp16.onnx"), "rollout_mode": "canary:100"}
    h = harness(settings=settings)
    assert h.worker.models.candidate is not None and h.worker.models.rollout == Rollout("canary", 100)
    (record,) = h.wait_final([h.submit(cat_jpeg)])
    assert record.result is not None and record.result["version"] == "0.1.0-fp16"
    beat = h.store.workers()
    assert beat and beat[0].info["rollout"] == "canary:100" and beat[0].info["candidate_version"] == "0.1.0-fp16"


# -- the cache fill ---------------------------------------------------------------------------------------


def test_succeeded_results_fill_the_cache_and_failed_ones_do_not(
    harness: Callable[..., Harness], slow_classifier: Classifier, fast_classifier: Classifier, photo: Any
) -> None:
    cache = MemoryResultCache(ttl_seconds=3600)
    h = harness(cache=cache)
    coffee = photo("coffee.jpg")
    parts = {OWNER: "owner-a", IMAGE_SHA256: image_digest(coffee), **fast_context(fast_classifier, coffee)}
    good = h.submit(coffee, **parts)
    bad = h.submit(b"not an image", **{**parts, IMAGE_SHA256: image_digest(b"not an image")})
    no_parts = h.submit(photo("chelsea.jpg"))  # without the key's parts nothing can be cached
    ok, failed, _ = h.wait_final([good, bad, no_parts])
    assert ok.status is JobStatus.SUCCEEDED and failed.status is JobStatus.FAILED
    key = CacheKey("owner-a", image_digest(coffee), fast_classifier.card.version, slow_classifier.card.version)
    hit = cache.get(key)
    assert hit is not None and hit.source_job == good and hit.result["label"] == "espresso"
    assert hit.result["agreement"] is True and "shadow" not in hit.result
    assert cache.get(CacheKey("owner-a", image_digest(b"not an image"), key.fast_version, key.slow_version)) is None
    assert len(cache) == 1


def test_canary_answers_are_not_cached(
    harness: Callable[..., Harness], slow_classifier: Classifier, candidate: Classifier, cat_jpeg: bytes
) -> None:
    cache = MemoryResultCache(ttl_seconds=3600)
    h = harness(cache=cache, models=SlowModels(slow_classifier, candidate, Rollout("canary", 100)))
    parts = {OWNER: "o", IMAGE_SHA256: image_digest(cat_jpeg), FAST_VERSION: "f", FAST_CLASS_ID: "285"}
    (record,) = h.wait_final([h.submit(cat_jpeg, **parts)])
    assert record.result is not None and record.result["version"] == candidate.card.version
    assert len(cache) == 0


# -- metrics ---------------------------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.values: list[tuple[str, float, dict[str, str]]] = []

    def add(self, metric: Metric, value: float) -> None:
        self.values.append((metric.value, value, {}))

    def add_dimensioned(self, metric: Metric, value: float, dimensions: dict[str, str]) -> None:
        self.values.append((metric.value, value, dimensions))

    def flush(self) -> None:
        pass


def test_metrics_carry_agreement_the_shadow_and_the_version() -> None:
    sink = Sink()
    events = ObservedEvents(sink)  # type: ignore[arg-type]
    message = JobMessage(job_id="a" * 32, image=b"x")
    shadow = {"version": "v2", "agreement": False}
    events.final(
        message, JobStatus.SUCCEEDED, {"label": "x", "agreement": True, "version": "v1", "shadow": shadow}, None
    )
    events.final(message, JobStatus.SUCCEEDED, {"label": "x", "agreement": False, "version": "v1"}, None)
    events.final(message, JobStatus.SUCCEEDED, {"label": "x", "agreement": None, "version": "v1"}, None)
    assert [v for v in sink.values if v[0] == "FastSlowAgreement"] == [
        ("FastSlowAgreement", 1, {}),
        ("FastSlowAgreement", 0, {}),
    ]
    assert [v for v in sink.values if v[0] == "CandidateAgreement"] == [("CandidateAgreement", 0, {})]
    assert [v for v in sink.values if v[0] == "SlowAnswers"] == [("SlowAnswers", 1, {"model_version": "v1"})] * 3


def test_a_callback_never_carries_the_shadow() -> None:
    sent: list[dict[str, Any]] = []

    class Callbacks:
        def submit(self, url: str, payload: dict[str, Any]) -> None:
            sent.append(payload)

    events = ObservedEvents(None, Callbacks())  # type: ignore[arg-type]
    message = JobMessage(job_id="a" * 32, image=b"x", context={"callback_url": "https://example.test/hook"})
    events.final(message, JobStatus.SUCCEEDED, {"label": "espresso", "shadow": {"label": "cup"}}, None)
    assert sent[0]["prediction"] == "espresso" and "shadow" not in sent[0]["slow"]


def test_dimensioned_metric_is_emf_with_the_version(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from twopass.observability.metrics import MetricsSink

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    MetricsSink(service="twopass-worker").add_dimensioned(Metric.SLOW_ANSWERS, 1, {"model_version": "0.1.0-fp16"})
    blob = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert blob["model_version"] == "0.1.0-fp16" and blob["service"] == "twopass-worker"
    assert blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "model_version"]]
    assert blob["SlowAnswers"] == [1.0]

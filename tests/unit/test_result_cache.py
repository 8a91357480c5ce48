"""The result cache: keys, expiry and both twins, what the API serves from it, and what the worker puts in it."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient

from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.exceptions import DependencyError
from twopass.jobs.cache import (
    CACHE_PREFIX,
    CachedResult,
    CacheKey,
    DynamoResultCache,
    MemoryResultCache,
    ResultCache,
    cache_for,
    image_digest,
)
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.queue.base import JobMessage
from twopass.queue.sqs import SqsPublisher

KEY = CacheKey("owner-a", image_digest(b"image"), "fast-1", "slow-1")
RESULT = {"model": "efficientnet-lite2", "label": "espresso", "top_k": [], "inference_ms": 12.5, "agreement": True}


def test_every_part_of_the_key_matters() -> None:
    variants = [
        CacheKey("owner-b", KEY.image_sha256, KEY.fast_version, KEY.slow_version),
        CacheKey(KEY.owner, image_digest(b"imagf"), KEY.fast_version, KEY.slow_version),
        CacheKey(KEY.owner, KEY.image_sha256, "fast-2", KEY.slow_version),
        CacheKey(KEY.owner, KEY.image_sha256, KEY.fast_version, "slow-2"),
    ]
    digests = {KEY.digest(), *(v.digest() for v in variants)}
    assert len(digests) == 5
    # Parts cannot run into each other: ("ab", "c") is not ("a", "bc").
    assert CacheKey("ab", "c", "f", "s").digest() != CacheKey("a", "bc", "f", "s").digest()
    assert KEY.item_id().startswith(CACHE_PREFIX) and len(KEY.item_id()) == len(CACHE_PREFIX) + 64


def _roundtrip(cache: ResultCache) -> None:
    assert cache.get(KEY) is None
    cache.put(KEY, RESULT, "job-1")
    hit = cache.get(KEY)
    assert hit is not None and hit.result == RESULT and hit.source_job == "job-1"
    assert hit.stored_at == pytest.approx(time.time(), abs=5)
    assert cache.get(CacheKey("owner-b", KEY.image_sha256, KEY.fast_version, KEY.slow_version)) is None


def test_memory_cache_roundtrip_and_expiry() -> None:
    _roundtrip(MemoryResultCache(ttl_seconds=60))
    short = MemoryResultCache(ttl_seconds=0.05)
    short.put(KEY, RESULT, "job-1")
    assert len(short) == 1
    time.sleep(0.1)
    assert short.get(KEY) is None and len(short) == 0


def test_dynamodb_cache_roundtrip_and_expiry(aws: Settings) -> None:
    cache = DynamoResultCache(aws.table_name, ttl_seconds=60)
    _roundtrip(cache)
    item = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=aws.table_name, Key={"job_id": {"S": KEY.item_id()}}
    )["Item"]
    assert int(item["expires_at"]["N"]) == pytest.approx(time.time() + 60, abs=5)
    # DynamoDB removes expired items late (moto never does): an expired entry is a miss.
    expired = DynamoResultCache(aws.table_name, ttl_seconds=-1)
    expired.put(KEY, RESULT, "job-2")
    assert cache.get(KEY) is None


def test_dynamodb_cache_entries_are_not_jobs(aws: Settings) -> None:
    store = DynamoJobStore(aws.table_name)
    cache = cache_for(store, 60)
    assert isinstance(cache, DynamoResultCache)
    cache.put(KEY, RESULT, "job-1")
    assert store.get(KEY.item_id()) is not None  # the store would read it, but the API never asks:
    assert store.never_started(time.time() + 60) == []  # and it is not a pending job
    assert isinstance(cache_for(MemoryJobStore(), 60), MemoryResultCache)


def test_fill_is_best_effort() -> None:
    class Broken(MemoryResultCache):
        def put(self, key: CacheKey, result: dict[str, Any], source_job: str) -> None:
            raise DependencyError("table unavailable")

    assert Broken(60).fill(KEY, RESULT, "job-1") is False
    assert MemoryResultCache(60).fill(KEY, RESULT, "job-1") is True


# -- the API serves from it -------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def queue_messages(settings: Settings) -> list[JobMessage]:
    out = boto3.client("sqs", region_name="us-east-1").receive_message(
        QueueUrl=settings.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    )
    return [JobMessage.decode(m["Body"]) for m in out.get("Messages", [])]


@pytest.fixture
def cached_api(
    aws: Settings, fast_classifier: Classifier, slow_classifier: Classifier
) -> Iterator[tuple[TestClient, Settings, TwopassService]]:
    settings = aws.replace(result_cache=True, api_keys="key-a,key-b")
    service = TwopassService(
        settings, DynamoJobStore(settings.table_name), SqsPublisher(settings.queue_url), classifier=fast_classifier
    )
    with TestClient(create_app(service, emit_metrics=False), raise_server_exceptions=False) as client:
        yield client, settings, service


def _prime(service: TwopassService, owner: str, data: bytes, slow_version: str) -> None:
    cache = service.shortcuts.cache
    assert cache is not None
    key = CacheKey(owner, image_digest(data), service.classifier.card.version, slow_version)
    cache.put(key, {**RESULT, "answered_by": "slow", "version": slow_version}, "a" * 32)


def test_a_repeated_image_is_answered_from_the_cache_and_a_changed_byte_is_not(
    cached_api: tuple[TestClient, Settings, TwopassService], photo: Any, slow_classifier: Classifier
) -> None:
    client, settings, service = cached_api
    from twopass.api.auth import key_owner

    image = photo("coffee.jpg")
    slow_version = slow_classifier.card.version  # the card beside the settings' slow model
    _prime(service, key_owner("key-a"), image, slow_version)

    hit = client.post("/predict", json={"image_data": b64(image)}, headers={"x-api-key": "key-a"}).json()
    assert hit["status"] == "succeeded" and hit["cached"] is True and hit["answered_by"] == "slow"
    assert hit["slow"]["label"] == "espresso" and hit["fast"]["label"] == "espresso"
    assert queue_messages(settings) == []
    job = client.get(hit["status_url"], headers={"x-api-key": "key-a"}).json()
    assert job["status"] == "succeeded" and job["cached"] is True
    assert job["answered_by"] == "slow" and job["model_version"] == slow_version and job["agreement"] is True
    assert job[hit["job_id"]] == {"prediction": "espresso"}

    changed = bytearray(image)
    changed[-3] ^= 0x01  # inside the JPEG's entropy-coded data: still decodes, another image to the cache
    miss = client.post("/predict", json={"image_data": b64(bytes(changed))}, headers={"x-api-key": "key-a"}).json()
    assert miss["status"] == "queued" and "cached" not in miss
    other = client.post("/predict", json={"image_data": b64(image)}, headers={"x-api-key": "key-b"}).json()
    assert other["status"] == "queued"  # scoped to the owner
    fresh = client.post(
        "/predict", json={"image_data": b64(image), "slow": "always"}, headers={"x-api-key": "key-a"}
    ).json()
    assert fresh["status"] == "queued"  # always asks for a fresh slow pass
    assert {m.job_id for m in queue_messages(settings)} == {miss["job_id"], other["job_id"], fresh["job_id"]}


def test_the_queued_message_carries_the_cache_key_parts(
    cached_api: tuple[TestClient, Settings, TwopassService], cat_jpeg: bytes
) -> None:
    client, settings, _ = cached_api
    from twopass.api.auth import key_owner

    answer = client.post("/predict", json={"image_data": b64(cat_jpeg)}, headers={"x-api-key": "key-a"}).json()
    (message,) = queue_messages(settings)
    assert message.job_id == answer["job_id"]
    assert message.context["owner"] == key_owner("key-a")
    assert message.context["image_sha256"] == image_digest(cat_jpeg)


def test_an_unreadable_cache_sends_the_job_to_the_queue(
    cached_api: tuple[TestClient, Settings, TwopassService], cat_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, settings, service = cached_api

    def down(_key: CacheKey) -> CachedResult | None:
        raise DependencyError("table unavailable")

    assert service.shortcuts.cache is not None
    monkeypatch.setattr(service.shortcuts.cache, "get", down)
    answer = client.post("/predict", json={"image_data": b64(cat_jpeg)}, headers={"x-api-key": "key-a"})
    assert answer.status_code == 200 and answer.json()["status"] == "queued"
    assert len(queue_messages(settings)) == 1


def test_cache_off_by_default(aws: Settings, fast_classifier: Classifier) -> None:
    service = TwopassService(
        aws, DynamoJobStore(aws.table_name), SqsPublisher(aws.queue_url), classifier=fast_classifier
    )
    assert aws.result_cache is False and service.shortcuts.cache is None


def test_an_unknown_slow_version_is_asked_again_soon_a_known_one_is_trusted_longer(
    cached_api: tuple[TestClient, Settings, TwopassService], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before any worker's heartbeat the slow version is unknown and the cache is skipped; the first
    # heartbeat must turn the cache on within seconds, not after the known version's 30 s.
    from twopass.api.services import shortcuts as module

    _, _, service = cached_api
    cards: list[dict[str, Any] | None] = [None, {"version": "slow-1"}, {"version": "slow-2"}]
    asked: list[int] = []

    def slow_card() -> dict[str, Any] | None:
        asked.append(1)
        return cards[min(len(asked), len(cards)) - 1]

    now = [1000.0]
    monkeypatch.setattr(service.reports, "slow_card", slow_card)
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    shortcuts = service.shortcuts
    assert shortcuts.slow_version() is None
    now[0] += module.UNKNOWN_VERSION_SECONDS / 2
    assert shortcuts.slow_version() is None and len(asked) == 1  # remembered briefly
    now[0] += module.UNKNOWN_VERSION_SECONDS
    assert shortcuts.slow_version() == "slow-1" and len(asked) == 2  # asked again: a worker has reported
    now[0] += module.SLOW_VERSION_SECONDS / 2
    assert shortcuts.slow_version() == "slow-1" and len(asked) == 2  # a known version is trusted longer
    now[0] += module.SLOW_VERSION_SECONDS
    assert shortcuts.slow_version() == "slow-2"

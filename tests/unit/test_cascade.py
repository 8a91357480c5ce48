"""The cascade: the threshold decision, the per-request ``slow`` mode, and what the API does with them."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient

from tests.conftest import CAT_LABELS
from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.cascade import FAST_CLASS_ID, FAST_LABEL, FAST_VERSION, Cascade, Route, SlowMode, parse_mode
from twopass.config import Settings
from twopass.exceptions import ConfigError, InvalidRequestError
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.models.runtime import Classifier
from twopass.queue.base import JobMessage
from twopass.queue.sqs import SqsPublisher

# The fast model's top-1 probabilities on the bundled photos (its card): coffee 0.92, chelsea 0.41.
THRESHOLD = 0.8


# -- the decision -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "probability", "route"),
    [
        (SlowMode.AUTO, 0.80, Route.FAST),  # at the threshold: the fast answer stands
        (SlowMode.AUTO, 0.95, Route.FAST),
        (SlowMode.AUTO, 0.7999, Route.SLOW),
        (SlowMode.ALWAYS, 0.99, Route.SLOW),
        (SlowMode.NEVER, 0.10, Route.NO_JOB),
    ],
)
def test_route_follows_the_threshold_and_the_mode(mode: SlowMode, probability: float, route: Route) -> None:
    assert Cascade(THRESHOLD).route(mode, probability) is route


def test_threshold_zero_is_off() -> None:
    off = Cascade(0.0)
    assert not off.enabled
    assert off.route(SlowMode.AUTO, 1.0) is Route.SLOW
    assert off.route(SlowMode.NEVER, 1.0) is Route.NO_JOB


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_a_threshold_that_is_no_probability_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        Cascade(bad)


def test_parse_mode() -> None:
    assert parse_mode(None) is SlowMode.AUTO
    assert parse_mode("") is SlowMode.AUTO
    assert parse_mode("Always") is SlowMode.ALWAYS
    with pytest.raises(InvalidRequestError) as err:
        parse_mode("sometimes")
    assert err.value.code == "invalid_slow_mode"


def test_setting_reads_from_the_environment() -> None:
    assert Settings.from_env({"TWOPASS_CASCADE_THRESHOLD": "0.85"}).cascade_threshold == 0.85
    assert Settings.from_env({}).cascade_threshold == 0.0


# -- through the API ---------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def queued_messages(settings: Settings) -> list[JobMessage]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    out = sqs.receive_message(QueueUrl=settings.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [JobMessage.decode(m["Body"]) for m in out.get("Messages", [])]


@pytest.fixture
def cascade_client(aws: Settings, fast_classifier: Classifier) -> Iterator[tuple[TestClient, Settings]]:
    settings = aws.replace(cascade_threshold=THRESHOLD)
    service = TwopassService(
        settings, DynamoJobStore(settings.table_name), SqsPublisher(settings.queue_url), classifier=fast_classifier
    )
    with TestClient(create_app(service, emit_metrics=False), raise_server_exceptions=False) as client:
        yield client, settings


def test_a_confident_photo_is_answered_by_the_fast_model_without_a_queue(
    cascade_client: tuple[TestClient, Settings], photo: Any, fast_classifier: Classifier
) -> None:
    client, settings = cascade_client
    answer = client.post("/predict", json={"image_data": b64(photo("coffee.jpg"))}).json()
    assert answer["status"] == "succeeded" and answer["answered_by"] == "fast"
    assert answer["fast"]["top_k"][0]["probability"] >= THRESHOLD
    assert queued_messages(settings) == []
    job = client.get(answer["status_url"]).json()
    assert job["status"] == "succeeded" and job["answered_by"] == "fast"
    assert job[answer["job_id"]] == {"prediction": "espresso"}
    assert job["slow"]["model"] == "efficientnet-lite0" and job["slow"]["label"] == "espresso"
    assert job["model_version"] == fast_classifier.card.version
    assert job["agreement"] is None and job["cached"] is False


def test_the_same_photo_goes_through_the_queue_under_slow_always(
    cascade_client: tuple[TestClient, Settings], photo: Any, fast_classifier: Classifier
) -> None:
    client, settings = cascade_client
    answer = client.post("/predict", json={"image_data": b64(photo("coffee.jpg")), "slow": "always"}).json()
    assert answer["status"] == "queued" and "answered_by" not in answer
    (message,) = queued_messages(settings)
    assert message.job_id == answer["job_id"]
    # The fast answer travels with the job, for the worker to compare with the slow one.
    assert message.context[FAST_LABEL] == "espresso"
    assert message.context[FAST_CLASS_ID] == str(answer["fast"]["top_k"][0]["class_id"])
    assert message.context[FAST_VERSION] == fast_classifier.card.version
    job = client.get(answer["status_url"]).json()
    assert job["status"] == "queued" and job["answered_by"] is None


def test_an_unsure_photo_goes_through_the_queue(cascade_client: tuple[TestClient, Settings], cat_jpeg: bytes) -> None:
    client, settings = cascade_client
    answer = client.post("/predict", content=cat_jpeg, headers={"Content-Type": "image/jpeg"}).json()
    assert answer["efficientnet-lite0"] in CAT_LABELS
    assert answer["fast"]["top_k"][0]["probability"] < THRESHOLD
    assert answer["status"] == "queued"
    assert [m.job_id for m in queued_messages(settings)] == [answer["job_id"]]


def test_slow_never_answers_with_no_job(cascade_client: tuple[TestClient, Settings], cat_jpeg: bytes) -> None:
    client, settings = cascade_client
    response = client.post("/predict?slow=never", content=cat_jpeg, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200
    answer = response.json()
    assert answer["job_id"] is None and "status_url" not in answer
    assert answer["answered_by"] == "fast" and answer["efficientnet-lite0"] in CAT_LABELS
    assert queued_messages(settings) == []
    items = boto3.client("dynamodb", region_name="us-east-1").scan(TableName=settings.table_name)["Items"]
    assert [i for i in items if not i["job_id"]["S"].startswith("#")] == []


def test_the_json_field_wins_over_the_query(cascade_client: tuple[TestClient, Settings], photo: Any) -> None:
    client, _ = cascade_client
    body = json.dumps({"image_data": b64(photo("coffee.jpg")), "slow": "always"})
    answer = client.post("/predict?slow=never", content=body, headers={"Content-Type": "application/json"}).json()
    assert answer["status"] == "queued"


@pytest.mark.parametrize("where", ["json", "query"])
def test_an_unknown_slow_mode_is_a_client_error(
    cascade_client: tuple[TestClient, Settings], cat_jpeg: bytes, where: str
) -> None:
    client, settings = cascade_client
    if where == "json":
        response = client.post("/predict", json={"image_data": b64(cat_jpeg), "slow": "sometimes"})
    else:
        response = client.post("/predict?slow=sometimes", content=cat_jpeg, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error" and "slow" in response.json()["detail"]
    assert queued_messages(settings) == []


def test_without_a_threshold_every_job_is_queued_with_the_fast_answer(
    aws: Settings, fast_classifier: Classifier, photo: Any
) -> None:
    service = TwopassService(
        aws, DynamoJobStore(aws.table_name), SqsPublisher(aws.queue_url), classifier=fast_classifier
    )
    with TestClient(create_app(service, emit_metrics=False)) as client:
        answer = client.post("/predict", json={"image_data": b64(photo("coffee.jpg"))}).json()
    assert answer["status"] == "queued"
    (message,) = queued_messages(aws)
    assert message.context[FAST_LABEL] == "espresso"


def test_an_idempotent_replay_of_a_fast_answer_is_the_same_answer(
    cascade_client: tuple[TestClient, Settings], photo: Any
) -> None:
    client, _ = cascade_client
    body = {"image_data": b64(photo("coffee.jpg"))}
    first = client.post("/predict", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/predict", json=body, headers={"Idempotency-Key": "k1"})
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json() and first.json()["answered_by"] == "fast"

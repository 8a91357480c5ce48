"""Shared fixtures: fake AWS credentials, the template's resources in moto, real models and photos."""

from __future__ import annotations

import os

# Before anything imports boto3: no real AWS, ever. (twopass itself turns onnxruntime's telemetry off.)
for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ[_name] = _value
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_PROFILE", None)

import contextlib  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from twopass.aws import reset_clients  # noqa: E402
from twopass.config import DATA_DIR, Settings  # noqa: E402
from twopass.jobs.base import JobStore  # noqa: E402
from twopass.jobs.dynamodb import DynamoJobStore  # noqa: E402
from twopass.jobs.memory import MemoryJobStore  # noqa: E402
from twopass.local.stack import LocalStack, free_port  # noqa: E402

TESTS = Path(__file__).parent
PHOTOS = TESTS / "data"
EVENTS = TESTS / "events"
#: ImageNet classes a photo of a cat may fairly be given.
CAT_LABELS = frozenset({"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx", "cougar"})


@pytest.fixture(scope="session")
def cat_jpeg() -> bytes:
    return (DATA_DIR / "cat.jpg").read_bytes()


@pytest.fixture(scope="session")
def photo() -> object:
    def read(name: str) -> bytes:
        return (PHOTOS / name).read_bytes()

    return read


@pytest.fixture(scope="session")
def fast_classifier():  # type: ignore[no-untyped-def]
    from twopass.models.runtime import Classifier

    return Classifier.from_location(Settings().fast_model, top_k=5)


@pytest.fixture(scope="session")
def slow_classifier():  # type: ignore[no-untyped-def]
    from twopass.models.runtime import Classifier

    return Classifier.from_location(Settings().slow_model, top_k=5)


_DYNAMODB_LOCK = threading.Lock()


def _atomic_dynamodb(env: pytest.MonkeyPatch) -> None:
    """One in-process DynamoDB call at a time, as the local emulator does (twopass.local.emulator):
    moto checks a condition, then writes, without a lock, and copies tables while other threads
    write to them; real DynamoDB is atomic per request, which is what the tests are about."""
    from moto.dynamodb.responses import DynamoHandler

    call_action = DynamoHandler.call_action

    def locked(self: DynamoHandler) -> object:
        with _DYNAMODB_LOCK:
            return call_action(self)

    env.setattr(DynamoHandler, "call_action", locked)


@contextlib.contextmanager
def template_in_moto() -> Iterator[Settings]:
    """moto in-process with the template's queues, table and bucket created through CloudFormation.

    The env vars the template gives the API are set while it lasts; yields settings reading them.
    """
    import boto3
    from moto import mock_aws

    from twopass.local.provision import provision

    reset_clients()
    with mock_aws(), pytest.MonkeyPatch.context() as env:
        _atomic_dynamodb(env)
        provisioned = provision(lambda service: boto3.client(service, region_name="us-east-1"))
        for key, value in provisioned.api_env.items():
            env.setenv(key, value)
        try:
            yield Settings.from_env()
        finally:
            reset_clients()


@pytest.fixture
def aws() -> Iterator[Settings]:
    with template_in_moto() as settings:
        yield settings.replace(poll_wait_seconds=0, heartbeat_seconds=0.2)


@pytest.fixture(params=["dynamodb", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    """Each job store twin in turn: DynamoDB (the template's table in moto) and in memory."""
    if request.param == "memory":
        yield MemoryJobStore()
    else:
        settings: Settings = request.getfixturevalue("aws")
        yield DynamoJobStore(settings.table_name)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole local stack, as `make run` starts it, on free loopback ports, shared by the
    end-to-end and client tests. ``TWOPASS_API_KEY`` is set so the SDK and CLI send its key.
    """
    local = LocalStack(
        api_port=free_port(),
        emulator_port=free_port(),
        workers=1,
        log_dir=tmp_path_factory.mktemp("stack-logs"),
        # JSON logs, as on AWS, so tests can follow a job id through them; short polls so the
        # worker stops promptly at teardown.
        env={"TWOPASS_POLL_WAIT_SECONDS": "1", "TWOPASS_HEARTBEAT_SECONDS": "1", "TWOPASS_LOG_FORMAT": "json"},
    )
    with local, pytest.MonkeyPatch.context() as env:
        env.setenv("TWOPASS_API_KEY", local.api_key or "")
        yield local

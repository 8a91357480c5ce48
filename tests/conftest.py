"""Shared fixtures: fake AWS credentials, the template's resources in moto, real models and photos."""

from __future__ import annotations

import os

# Before anything imports onnxruntime or boto3: no telemetry, no real AWS, ever.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
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

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from twopass.aws import reset_clients  # noqa: E402
from twopass.config import DATA_DIR, REPO_ROOT, Settings  # noqa: E402

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


@pytest.fixture
def aws() -> Iterator[Settings]:
    """moto in-process with the template's queues and table created through CloudFormation.

    Yields settings pointing at them; the env vars the template gives the API are set too.
    """
    import boto3
    from moto import mock_aws
    from twopass.local.provision import provision

    reset_clients()
    with mock_aws():
        provisioned = provision(lambda service: boto3.client(service, region_name="us-east-1"))
        saved = {k: os.environ.get(k) for k in provisioned.api_env}
        os.environ.update(provisioned.api_env)
        try:
            yield Settings.from_env().replace(poll_wait_seconds=0, heartbeat_seconds=0.2)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            reset_clients()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twopass.local.stack import LocalStack, free_port


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole local stack, as `make run` starts it, on free loopback ports."""
    local = LocalStack(
        api_port=free_port(),
        emulator_port=free_port(),
        workers=1,
        log_dir=tmp_path_factory.mktemp("stack-logs"),
        # JSON logs, as on AWS, so the tests can follow a job id through them.
        env={"TWOPASS_POLL_WAIT_SECONDS": "2", "TWOPASS_HEARTBEAT_SECONDS": "1", "TWOPASS_LOG_FORMAT": "json"},
    )
    with local:
        yield local

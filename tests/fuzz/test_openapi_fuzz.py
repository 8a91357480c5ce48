"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis).

Every generated request, valid or not, must get a documented status with a body that matches the
schema, and never a 5xx.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.conftest import template_in_moto
from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.models.runtime import Classifier
from twopass.queue.sqs import SqsPublisher

pytestmark = pytest.mark.slow
API_KEY = "fuzz-key"


@pytest.fixture(scope="module")
def app_schema(fast_classifier: Classifier) -> Iterator[Any]:
    with template_in_moto() as settings:
        config = settings.replace(api_keys=API_KEY)
        service = TwopassService(
            config, DynamoJobStore(config.table_name), SqsPublisher(config.queue_url), fast_classifier
        )
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app(service))


#: Examples per operation with inputs: 100 in ``make test``; TWOPASS_FUZZ_EXAMPLES=1000 for a longer hunt.
EXAMPLES = int(os.environ.get("TWOPASS_FUZZ_EXAMPLES", "100"))


def test_no_5xx_and_responses_match_the_schema(app_schema: Any) -> None:
    cases: dict[str, int] = {}
    for result in app_schema.get_all_operations():
        operation = result.ok()
        cases[operation.label] = 0

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            # Every default check (no server error, documented status, content type, headers and
            # body) except "schema-valid data is accepted": no schema can say "a decodable photo",
            # so a valid string that is not an image is rightly a 400.
            case.call_and_validate(headers={"x-api-key": API_KEY}, excluded_checks=[positive_data_acceptance])
            cases[case.operation.label] += 1

        check()
    print(f"schemathesis cases: {sum(cases.values())} over {len(cases)} operations: {cases}")
    assert len(cases) >= 6
    # Operations without inputs have one case; the ones with inputs (POST /predict's JSON and
    # image bodies, GET /job/{job_id}) get EXAMPLES each.
    assert cases["POST /predict"] == cases["GET /job/{job_id}"] == EXAMPLES

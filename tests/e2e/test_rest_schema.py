"""Property-based run of schemathesis against the gateway's own /openapi.json.

Bounded: a fixed number of generated cases per operation, a valid bearer token on every
request. The gateway must never answer with a 5xx, whatever the input.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from ops.process import ServiceProcess

MAX_CASES_PER_OPERATION = 15


@pytest.fixture(scope="module")
def bearer(gateway: ServiceProcess) -> Iterator[dict[str, str]]:
    with httpx.Client(base_url=gateway.base_url, timeout=15.0) as api:
        email = f"fuzz-{uuid.uuid4().hex[:8]}@example.com"
        created = api.post(
            "/api/users", json={"email": email, "name": "F", "password": "pw-12345678"}
        )
        assert created.status_code == 201
        login = api.post("/api/auth/login", json={"email": email, "password": "pw-12345678"})
        yield {"Authorization": f"Bearer {login.json()['accessToken']}"}


def test_no_server_errors(gateway: ServiceProcess, bearer: dict[str, str]) -> None:
    # The pytest plugin of schemathesis does not run under pytest 9, so each operation's
    # strategy is driven by hypothesis directly.
    api_schema = schemathesis.openapi.from_url(f"{gateway.base_url}/openapi.json")
    checked = 0
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        # /readyz's 503 is its meaning, not an error; it is checked elsewhere.
        if operation.path == "/readyz":
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_CASES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: schemathesis.Case) -> None:
            response = case.call(base_url=gateway.base_url, headers=bearer, timeout=15)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} "
                    f"{response.text[:200]}"
                )
            case.validate_response(response, checks=[not_a_server_error])

        run()
        checked += 1
    assert checked >= 20
    assert failures == []

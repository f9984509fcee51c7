"""An API fuzz run from the OpenAPI schema (schemathesis): every operation gets generated
requests (valid and invalid: wrong types, odd strings, bodies that break the schema),
sent to the real API with the real registry, deployer and tracker behind it on real NATS,
Mosquitto and InfluxDB. No answer may be a 5xx, and the API must still answer afterwards."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Err

#: Examples per operation: about 30 operations, so a few hundred requests in all.
EXAMPLES = 12


def test_no_request_gets_a_server_error(api_platform) -> None:
    # schemathesis' own pytest plugin (lazy fixtures) does not run on pytest 9: drive the
    # operations' hypothesis strategies directly instead.
    schema = schemathesis.openapi.from_url(f"{api_platform.url}/openapi.json")
    # Admin, so the requests reach past authentication into every handler.
    auth = {"Authorization": f"Bearer {api_platform.keys['admin']}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same requests every run: a failure can be replayed
            database=None,
        )
        @given(operation.as_strategy())
        def run(case) -> None:
            # An upload holds its answer up to `wait` seconds (600 at most) for a verdict
            # that never comes here (no validator runs): keep a generated number short.
            wait = (case.query or {}).get("wait")
            if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 1:
                case.query["wait"] = 1
            response = case.call(headers=auth, timeout=30)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} {case.query or ''} -> "
                    f"{response.status_code}: {response.text[:300]}"
                )

        run()
    assert operations >= 30
    assert failures == []


def test_the_api_still_answers_after_the_fuzz_run(api_platform) -> None:
    assert httpx.get(f"{api_platform.url}/healthz", timeout=10).json()["status"] == "ok"

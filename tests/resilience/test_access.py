"""Access control: every REST route against every role (the route list comes from the
app's OpenAPI, so a new route without a rule here fails), a device's broker credentials
against every other device's topics, and no secret in any log line of a full flow."""

from __future__ import annotations

import uuid

from resilience_support import REPO

from services.api.app import create_app

PUBLIC, VIEWER, DEPLOYER, ADMIN = "public", "viewer", "deployer", "admin"
RANK = {VIEWER: 0, DEPLOYER: 1, ADMIN: 2}

#: The least role each route needs. A route missing here fails the test: decide its rule.
RULES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/asyncapi"): PUBLIC,  # the event documentation, like /docs
    ("POST", "/api/v1/devices/enroll"): PUBLIC,  # the one-time enrolment token is the credential
    ("GET", "/api/v1/whoami"): VIEWER,
    ("GET", "/api/v1/models"): VIEWER,
    ("GET", "/api/v1/models/{model}"): VIEWER,
    ("GET", "/api/v1/models/{model}/stats"): VIEWER,
    ("GET", "/api/v1/models/{model}/versions"): VIEWER,
    ("GET", "/api/v1/models/{model}/versions/{ref}"): VIEWER,
    ("GET", "/api/v1/models/{model}/versions/{ref}/artifact"): VIEWER,
    ("GET", "/api/v1/models/{model}/versions/{ref}/reports"): VIEWER,
    ("PUT", "/api/v1/models/{model}/versions/{version}"): DEPLOYER,
    ("PATCH", "/api/v1/models/{model}/versions/{version}"): DEPLOYER,
    ("DELETE", "/api/v1/models/{model}/versions/{version}"): ADMIN,
    ("PUT", "/api/v1/models/{model}/aliases/{alias}"): DEPLOYER,
    ("DELETE", "/api/v1/models/{model}/aliases/{alias}"): DEPLOYER,
    ("POST", "/api/v1/artifacts"): DEPLOYER,
    ("GET", "/api/v1/artifacts/{artifact_id}"): VIEWER,
    ("GET", "/api/v1/artifacts/{artifact_id}/stored"): DEPLOYER,
    ("POST", "/api/v1/keys"): ADMIN,
    ("GET", "/api/v1/keys"): ADMIN,
    ("DELETE", "/api/v1/keys/{key_id}"): ADMIN,
    ("POST", "/api/v1/devices/enrollment-tokens"): ADMIN,
    ("GET", "/api/v1/devices"): VIEWER,
    ("GET", "/api/v1/devices/{device_id}"): VIEWER,
    ("PUT", "/api/v1/devices/{device_id}/labels"): DEPLOYER,
    ("POST", "/api/v1/deployments"): DEPLOYER,
    ("GET", "/api/v1/deployments"): VIEWER,
    ("GET", "/api/v1/deployments/{deployment_id}"): VIEWER,
    ("POST", "/api/v1/deployments/{deployment_id}/pause"): DEPLOYER,
    ("POST", "/api/v1/deployments/{deployment_id}/resume"): DEPLOYER,
    ("POST", "/api/v1/deployments/{deployment_id}/cancel"): DEPLOYER,
    ("POST", "/api/v1/deployments/{deployment_id}/rollback"): DEPLOYER,
}
#: Served but not in the schema: HEAD twins of downloads (same rule as GET), API docs.
UNLISTED: dict[tuple[str, str], str] = {
    ("HEAD", "/api/v1/models/{model}/versions/{ref}/artifact"): VIEWER,
    ("HEAD", "/api/v1/artifacts/{artifact_id}"): VIEWER,
    ("HEAD", "/api/v1/artifacts/{artifact_id}/stored"): DEPLOYER,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
}
#: Path parameters: names that exist nowhere, so an allowed call changes nothing.
PARAMS = {
    "model": "no-such-model", "version": "9.9.9", "ref": "9.9.9", "alias": "no-alias",
    "artifact_id": "0" * 64, "key_id": "no-such-key", "device_id": "no-such-device",
    "deployment_id": str(uuid.UUID(int=0)),
}  # fmt: skip


def schema_routes() -> set[tuple[str, str]]:
    from services.api.testing import platform_settings

    settings = platform_settings(REPO / "var" / "unused", nats_url="nats://127.0.0.1:1")
    paths = create_app(settings).openapi()["paths"]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def test_every_route_has_an_access_rule() -> None:
    routes = schema_routes()
    assert routes - set(RULES) == set(), "new routes without an access rule in RULES"
    assert set(RULES) - routes == set(), "rules for routes that no longer exist"


def test_every_route_against_every_role(api_platform) -> None:  # type: ignore[no-untyped-def]
    callers = {"anonymous": None, "forged": "eaf_000000000000_" + "A" * 43, **api_platform.keys}
    failures = []
    for (method, path), rule in {**RULES, **UNLISTED}.items():
        url = path.format(**PARAMS)
        for caller, token in callers.items():
            with api_platform.client(token) as c:
                status = c.request(method, url, content=b"").status_code
            if rule == PUBLIC:
                allowed = True
            elif caller in RANK:
                allowed = RANK[caller] >= RANK[rule]
            else:
                allowed = False
            expected_refusal = 401 if caller not in RANK else 403
            if allowed and status in (401, 403):
                failures.append(f"{method} {path} as {caller}: {status}, should be let through")
            if not allowed and status != expected_refusal:
                failures.append(f"{method} {path} as {caller}: {status}, want {expected_refusal}")
            if status >= 500 and status != 503:
                failures.append(f"{method} {path} as {caller}: {status}")
    assert failures == []

"""Access control: every REST route against every role (the route list comes from the
app's OpenAPI, so a new route without a rule here fails), a device's broker credentials
against every other device's topics, and no secret in any log line of a full flow."""

from __future__ import annotations

import uuid

import pytest

from services.api.app import create_app
from tests.support.resilience import REPO

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
    ("DELETE", "/api/v1/devices/{device_id}"): ADMIN,  # revokes what an admin token let in
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
    from tests.support.settings import platform_settings

    settings = platform_settings(REPO / "var" / "unused", nats_url="nats://127.0.0.1:1")
    paths = create_app(settings).openapi()["paths"]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def test_every_route_has_an_access_rule() -> None:
    routes = schema_routes()
    assert routes - set(RULES) == set(), "new routes without an access rule in RULES"
    assert set(RULES) - routes == set(), "rules for routes that no longer exist"


def test_every_route_against_every_role(api_platform) -> None:
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


# ---- the broker: one device's credentials against another's topics ----------------------


async def test_device_credentials_cannot_reach_another_device(
    mosquitto_server, mqtt_admin, mqtt_user, tmp_path, unique_id
) -> None:
    """Complements tests/integration/test_edge_runtime.py (subscriptions, forged state and
    metrics): forged manifests, chunks, online flags and broadcasts, the broker's admin
    API, session takeover by client id, and wildcard or shared reads."""
    import asyncio

    import aiomqtt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.common.mqtt_admin import SERVICE_ROLE
    from tests.support.deploy import TOPICS, enroll_device

    key = Ed25519PrivateKey.generate()
    a, b = unique_id("dev-a-"), unique_id("dev-b-")
    ra = await enroll_device(mqtt_admin, mosquitto_server, tmp_path / a, a, key)
    rb = await enroll_device(mqtt_admin, mosquitto_server, tmp_path / b, b, key)
    svc = await mqtt_user(roles=[SERVICE_ROLE])
    artifact = "ab" * 32
    host, port = mosquitto_server.host, mosquitto_server.port

    def client(reply, identifier=None, password=None):
        return aiomqtt.Client(
            host, port, username=reply.mqtt.username,
            password=password or reply.mqtt.password,
            identifier=identifier or reply.mqtt.client_id,
            protocol=aiomqtt.ProtocolVersion.V5, timeout=5,
        )  # fmt: skip

    # B's password is needed to be B; A's password does not open B's account.
    with pytest.raises(aiomqtt.MqttError):
        async with client(rb, password=ra.mqtt.password):
            pass
    async with (
        client(rb) as device_b,
        aiomqtt.Client(host, port, username=svc[0], password=svc[1],
                       protocol=aiomqtt.ProtocolVersion.V5) as platform,
    ):  # fmt: skip
        await device_b.subscribe(TOPICS.desired(b), qos=1)
        await device_b.subscribe(TOPICS.device_chunks(b), qos=1)
        await device_b.subscribe(TOPICS.artifact_chunks(artifact), qos=1)
        await platform.subscribe(TOPICS.online(b), qos=1)
        await platform.subscribe(TOPICS.artifact_get(artifact), qos=1)
        await platform.subscribe("$CONTROL/#", qos=1)

        # A cannot take B's connection over by using B's client id.
        with pytest.raises(aiomqtt.MqttError):
            async with client(ra, identifier=rb.mqtt.client_id):
                pass

        async with client(ra) as device_a:
            for topic in ("#", "$SYS/#", "$CONTROL/#", TOPICS.online(b),
                          TOPICS.artifact_get(artifact), f"$share/g/{TOPICS.desired(b)}",
                          f"$share/g/{TOPICS.prefix}/devices/+/chunks"):  # fmt: skip
                codes = await device_a.subscribe(topic, qos=1)
                assert [c.value for c in codes] == [0x87], topic
            forged = {
                TOPICS.desired(b): b'{"signed":"","signature":""}',
                TOPICS.device_chunks(b): b"forged chunk",
                TOPICS.artifact_chunks(artifact): b"forged broadcast",
                TOPICS.online(b): b"0",
                "$CONTROL/dynamic-security/v1": b'{"commands":[{"command":"listClients"}]}',
            }
            for topic, payload in forged.items():
                await device_a.publish(topic, payload, qos=1, retain=topic.endswith("online"))
            # A's own allowed request, sent last on the same connection: when the platform
            # has it, anything forged before it would have been delivered already.
            await device_a.publish(TOPICS.artifact_get(artifact), b"mine", qos=1)
            received = []
            async with asyncio.timeout(5):
                async for message in platform.messages:
                    received.append((str(message.topic), message.payload))
                    if message.payload == b"mine":
                        break
        await asyncio.sleep(0.3)  # B's side: nothing may trickle in
        while len(device_b.messages):
            message = await anext(device_b.messages)
            received.append((str(message.topic), message.payload))
    ours = {*forged, TOPICS.artifact_get(artifact)}
    assert [m for m in received if m[0] in ours] == [(TOPICS.artifact_get(artifact), b"mine")]

"""Enrolment cannot take over a device, and device keys are checked: through the REST API,
with the registry, the API and the deployer on real NATS and Mosquitto (dynamic security).

A token without a device id enrols only new ids; re-enrolling a device needs a token made
for it and is published as an audited ``eaf.device.enrolled``; all-zero and low-order
X25519 keys are refused (422); a stored key that cannot be sealed to fails its target
instead of stalling the deployment.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from edge_runtime import EdgeRuntime, StateDir, enroll, prepare
from schemas import crypto
from schemas.config import Settings
from schemas.deployer import EnrollReply
from schemas.events import DeviceEnrolled
from schemas.manifest import SignedManifest
from schemas.topics import Topics
from services.common.artifacts import ArtifactStore
from services.common.keys import load_kek
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import DeployerApp
from services.deployer.app import create_service as create_deployer
from services.deployer.store import Device
from tests.support.api import new_api_key, serve_in_thread
from tests.support.deploy import StaticCatalog, bias_model, platform_on_broker, put, running

TOPICS = Topics("eaf/v1")
P = 2**255 - 19
#: An all-zero key, a point of order 8 (libsodium's list), and ``p`` (0, not canonical).
BAD_KEYS = {
    "all-zero": bytes(32),
    "order 8": bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    "p (= 0)": P.to_bytes(32, "little"),
    "1 with the top bit set": (1 | 1 << 255).to_bytes(32, "little"),
}


@dataclass
class Platform:
    url: str
    settings: Settings
    app: DeployerApp
    catalog: StaticCatalog
    store: ArtifactStore
    tmp: Path
    http: httpx.AsyncClient
    admin: str
    deployer: str

    async def token(self, device_id: str | None = None, **fields: Any) -> str:
        """A one-time token made by the admin (for ``device_id``, or without one)."""
        r = await self.http.post(
            "/api/v1/devices/enrollment-tokens",
            json={"device_id": device_id, **fields},
            headers={"Authorization": f"Bearer {self.admin}"},
        )
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token

    async def enroll(self, device_id: str, token: str, state_dir: Path) -> EnrollReply:
        """What ``edge-runtime enroll`` does, in a thread (the deployer runs in this loop)."""
        return await asyncio.to_thread(
            enroll, self.url, token=token, device_id=device_id, state_dir=state_dir
        )

    async def post_enroll(self, device_id: str, token: str, public_key: str) -> httpx.Response:
        """The enrol call as any client may send it: a token, an id, a public key."""
        body = prepare(self.tmp / f"probe-{device_id}", device_id=device_id, token=token)
        payload = body.model_dump(mode="json") | {"public_key": public_key}
        return await self.http.post("/api/v1/devices/enroll", json=payload)

    async def stored_key(self, device_id: str) -> str | None:
        async with self.app.deployer.sessions() as s:
            d = await s.get(Device, device_id)
            return None if d is None else d.public_key

    async def deploy(self, target: dict[str, Any], **spec: Any) -> str:
        info = await put(self.store, bias_model(0.25))
        model = f"m-{info.artifact_id[:8]}"
        self.catalog.add(model, "1.0.0", info)
        r = await self.http.post(
            "/api/v1/deployments",
            json={"model": model, "version": "1.0.0", "target": target, **spec},
            headers={"Authorization": f"Bearer {self.deployer}"},
        )
        assert r.status_code == 201, r.text
        deployment_id: str = r.json()["deployment_id"]
        return deployment_id

    async def deployment(self, deployment_id: str) -> dict[str, Any]:
        r = await self.http.get(
            f"/api/v1/deployments/{deployment_id}",
            headers={"Authorization": f"Bearer {self.deployer}"},
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def enrolled_event(self, device_id: str) -> DeviceEnrolled:
        """The last ``eaf.device.enrolled`` on the stream (published before the reply)."""
        msg = await self.app.bus.js.get_last_msg(self.settings.nats.stream, DeviceEnrolled.SUBJECT)
        assert msg.data is not None
        event = DeviceEnrolled.model_validate_json(msg.data)
        assert event.device_id == device_id
        return event


@pytest.fixture
async def platform(
    nats_server, mosquitto_server, mqtt_user, tmp_path, unique_id
) -> AsyncIterator[Platform]:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings = platform_on_broker(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, user=user
    )
    catalog = StaticCatalog()
    with serve_in_thread(settings, durable_prefix=unique_id("registry-")) as url:
        async with AsyncExitStack() as stack:
            app = await stack.enter_async_context(create_deployer(settings, catalog=catalog))
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
            store = ArtifactStore(
                root=settings.model_repository.storage_path,
                kek=load_kek(settings.security),
                chunk_size=settings.deployment.chunk_size,
            )
            yield Platform(
                url=url, settings=settings, app=app, catalog=catalog, store=store,
                tmp=tmp_path, http=http, admin=await new_api_key(settings, role="admin"),
                deployer=await new_api_key(settings, role="deployer"),
            )  # fmt: skip


def fresh_key(tmp: Path, name: str) -> tuple[str, Path]:
    """A new device key pair in its own state directory: (public key base64, the dir)."""
    state = StateDir(tmp / name)
    state.create_key()
    return base64.b64encode(state.public_key_raw()).decode(), tmp / name


async def retained_manifest(reply: EnrollReply) -> bytes:
    """The device's retained ``desired``, read with its own credentials."""
    async with aiomqtt.Client(
        reply.mqtt.host, reply.mqtt.port, username=reply.mqtt.username,
        password=reply.mqtt.password, identifier=reply.mqtt.client_id,
        protocol=aiomqtt.ProtocolVersion.V5, timeout=10,
    ) as client:  # fmt: skip
        await client.subscribe(TOPICS.desired(reply.device_id), qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("no retained manifest")


async def connect_as(reply: EnrollReply) -> None:
    """Log in with the device's credentials and leave again (raises if refused)."""
    async with aiomqtt.Client(
        reply.mqtt.host, reply.mqtt.port, username=reply.mqtt.username,
        password=reply.mqtt.password, identifier=reply.mqtt.client_id,
        protocol=aiomqtt.ProtocolVersion.V5, timeout=10,
    ):  # fmt: skip
        pass


async def wait_completed(p: Platform, deployment_id: str, seconds: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        while (info := await p.deployment(deployment_id))["status"] != "completed":
            await asyncio.sleep(0.1)
    return info


async def test_a_token_without_a_device_id_cannot_take_over_an_enrolled_device(
    platform: Platform, unique_id
) -> None:
    p = platform
    victim = unique_id("rt-b-")
    reply = await p.enroll(victim, await p.token(victim), p.tmp / victim)
    key_before = await p.stored_key(victim)
    group_token = await p.token(group="field")
    attacker_key, attacker_dir = fresh_key(p.tmp, "attacker")

    async with running(EdgeRuntime(p.tmp / victim)) as runtime:
        # Step 1: the group token offered for the enrolled id.
        r = await p.post_enroll(victim, group_token, attacker_key)
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        detail = r.json()["detail"]
        assert "enrolled already" in detail
        assert "ask an admin for a token made for this device id" in detail
        assert await p.stored_key(victim) == key_before
        # Step 2: the broker keeps the real device (it was disconnected and locked out).
        await asyncio.sleep(1.0)
        assert runtime.connected
        # Step 3: the next deployment reaches the real device, sealed to its key only.
        deployment_id = await p.deploy({"device_id": victim})
        done = await wait_completed(p, deployment_id)
        assert done["outcome"] == "succeeded", done
    signed = SignedManifest.from_bytes(await retained_manifest(reply))
    manifest = signed.verify(StateDir(p.tmp / victim).platform_key())
    assert manifest.deployment_id == deployment_id and manifest.sealed_key
    sealed = base64.b64decode(manifest.sealed_key)
    names = {"device_id": victim, "artifact_id": manifest.artifact_id}
    assert crypto.open_dek(sealed, StateDir(p.tmp / victim).private_key(), **names)
    with pytest.raises(crypto.SealedKeyError):
        crypto.open_dek(sealed, StateDir(attacker_dir).private_key(), **names)

    # The refusal left the token unused: it still enrols an id nobody has.
    newcomer = unique_id("rt-new-")
    r = await p.post_enroll(newcomer, group_token, attacker_key)
    assert r.status_code == 200, r.text
    assert (await p.enrolled_event(newcomer)).reenrolled is False
    # ... once.
    r = await p.post_enroll(unique_id("rt-other-"), group_token, attacker_key)
    assert r.status_code == 403 and "used already" in r.json()["detail"]
    await p.app.link.publish(TOPICS.desired(victim), b"", qos=1, retain=True)


async def test_a_token_made_for_the_device_reenrols_it_and_the_event_says_so(
    platform: Platform, unique_id
) -> None:
    p = platform
    device_id = unique_id("rt-b-")
    first = await p.enroll(device_id, await p.token(device_id), p.tmp / "first")
    enrolled = await p.enrolled_event(device_id)
    assert enrolled.reenrolled is False and enrolled.previous_enrolled_at is None
    first_key = StateDir(p.tmp / "first").private_key().public_key()
    assert enrolled.key_id == crypto.key_id(first_key)

    # A device re-installed: an admin makes a token for its id.
    second = await p.enroll(device_id, await p.token(device_id), p.tmp / "second")
    event = await p.enrolled_event(device_id)
    assert event.event_id != enrolled.event_id
    assert event.reenrolled is True
    assert event.previous_enrolled_at is not None
    assert abs((event.previous_enrolled_at - enrolled.occurred_at).total_seconds()) < 2
    assert event.previous_key_id == crypto.key_id(first_key)
    assert event.key_id == crypto.key_id(StateDir(p.tmp / "second").private_key().public_key())
    assert event.token_created_by == "admin-key"
    # The old credentials stopped working; the new ones work.
    with pytest.raises(aiomqtt.MqttError):
        await connect_as(first)
    await connect_as(second)


async def test_all_zero_and_low_order_keys_are_refused_with_422(
    platform: Platform, unique_id
) -> None:
    p = platform
    token = await p.token()
    device_id = unique_id("rt-z-")
    for name, raw in BAD_KEYS.items():
        r = await p.post_enroll(device_id, token, base64.b64encode(raw).decode())
        assert r.status_code == 422, (name, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "small order" in r.json()["detail"], (name, r.text)
    assert await p.stored_key(device_id) is None
    # Nothing was used up: the same token enrols the id with a real key.
    good, _ = fresh_key(p.tmp, "good")
    r = await p.post_enroll(device_id, token, good)
    assert r.status_code == 200, r.text
    assert await p.stored_key(device_id) == good


async def test_a_stored_key_that_cannot_be_sealed_to_fails_its_target_and_the_rest_deploys(
    platform: Platform, unique_id
) -> None:
    p = platform
    group = unique_id("g-")
    good, bad = f"{group}-good", f"{group}-bad"
    await p.enroll(good, await p.token(good, group=group), p.tmp / good)
    # A row stored before enrolment checked keys: the all-zero key.
    async with p.app.deployer.sessions.begin() as s:
        s.add(
            Device(
                device_id=bad, group=group, labels={}, mqtt_username=bad,
                public_key=base64.b64encode(bytes(32)).decode(),
                capabilities={"onnxruntime_version": "1.20.0"},
            )
        )  # fmt: skip
    async with running(EdgeRuntime(p.tmp / good)):
        deployment_id = await p.deploy({"group": group}, success_threshold=0.5, error_threshold=0.5)
        done = await wait_completed(p, deployment_id)
    targets = {t["device_id"]: t for t in done["targets"]}
    assert targets[good]["state"] == "active"
    assert targets[bad]["state"] == "failed"
    assert "small order" in targets[bad]["detail"]
    assert "re-enrol" in targets[bad]["detail"]
    assert done["outcome"] == "failed"
    assert done["counts"] == {"active": 1, "failed": 1}

    # With no room for errors, the threshold counts the failure and stops the rollout
    # (the good device is offline now: only the failure can end it).
    strict = await p.deploy({"group": group}, error_threshold=0.0)
    stopped = await wait_completed(p, strict)
    assert stopped["outcome"] == "stopped", stopped
    assert "1 of 2 failed" in stopped["reason"]
    for device_id in (good, bad):
        await p.app.link.publish(TOPICS.desired(device_id), b"", qos=1, retain=True)

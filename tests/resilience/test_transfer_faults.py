"""Transfer faults on a real Mosquitto without the deployer: a chunk server that stalls
mid-transfer, and a device whose clock is far behind or far ahead of the platform's."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.properties import Properties

from edge_runtime import EdgeRuntime
from schemas.events import TargetState
from schemas.transfer import RejectionCode
from services.common.artifacts import ArtifactStore
from services.common.mqtt_admin import SERVICE_ROLE
from tests.support.deploy import (
    FakePlatform,
    bias_model,
    device_public_key,
    enroll_device,
    fake_platform,
    manifest_for,
    padded_model,
    put,
    running,
    service_mqtt,
)
from tests.support.resilience import seed_installed, wait_until

CHUNK = 4096
DAY = 86_400


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
async def platform(
    mosquitto_server, mqtt_user, tmp_path, signing_key
) -> AsyncIterator[FakePlatform]:
    store = ArtifactStore(root=tmp_path / "store", kek=os.urandom(32), chunk_size=CHUNK)
    user = await mqtt_user(roles=[SERVICE_ROLE])
    async with fake_platform(service_mqtt(mosquitto_server, *user), store, signing_key) as p:
        yield p


async def new_device(
    mqtt_admin,
    mosquitto_server,
    tmp_path: Path,
    unique_id: Callable[[str], str],
    key: Ed25519PrivateKey,
) -> Path:
    device_id = unique_id("dev-")
    state_dir = tmp_path / device_id
    await enroll_device(mqtt_admin, mosquitto_server, state_dir, device_id, key, stall=1.0)
    return state_dir


async def test_stalled_chunk_server_device_times_out_re_requests_and_resumes(
    platform, mqtt_admin, mosquitto_server, tmp_path, unique_id, signing_key
) -> None:
    state_dir = await new_device(mqtt_admin, mosquitto_server, tmp_path, unique_id, signing_key)
    data = padded_model(400 * CHUNK, seed=3)
    info = await put(platform.store, data)
    stalled = {"on": False, "swallowed": 0}

    def stall(topic: str, payload: bytes, props: Properties | None):
        # A stalled server: requests arrive, nothing goes out.
        if stalled["on"]:
            stalled["swallowed"] += 1
            return None
        return payload, props

    platform.publisher.tamper = stall
    platform.publisher.delay = 0.005
    async with running(EdgeRuntime(state_dir)) as rt:
        m = manifest_for(platform.store, info, device_id=rt.device_id,
                         public_key=device_public_key(state_dir), sequence=1)  # fmt: skip
        await platform.publish_manifest(m)
        await wait_until(lambda: rt.stats["chunks_received"] >= 100, 30, "100 chunks")
        stalled["on"] = True
        # Requests keep arriving for a while (the device's window), then stop: stalled.
        await wait_until(lambda: stalled["swallowed"] >= 8, 10, "the window to be swallowed")
        received = rt.stats["chunks_received"]
        requested_during_stall = rt.stats["chunks_requested"]
        await wait_until(lambda: rt.stats["chunks_requested"] > requested_during_stall, 10,
                         "the device to re-request after its stall timeout")  # fmt: skip
        stalled["on"] = False
        await rt.wait_for(
            lambda r: r.active is not None and r.active.artifact_id == info.artifact_id, 60
        )
        assert received < info.chunk_count
        state = rt.snapshot().deployment
        assert state is not None and state.state is TargetState.ACTIVE
        # It resumed: what was swallowed was asked for again, what had arrived was not
        # (a little slack for a natural stall on this shared machine).
        served = sum(n for k, n in platform.server.served.items() if k[0] == rt.device_id)
        assert served < info.chunk_count + stalled["swallowed"] + 32, served
    assert (state_dir / "models" / f"{info.artifact_id}.onnx").read_bytes() == data


@pytest.mark.parametrize(
    ("skew", "code", "says"),
    [
        (-DAY, RejectionCode.CLOCK_SKEW, "clock is behind"),
        (+DAY, RejectionCode.EXPIRED, "clock is ahead"),
    ],
    ids=["device-clock-a-day-behind", "device-clock-a-day-ahead"],
)
async def test_device_clock_far_off_is_a_clear_refusal_and_the_old_model_serves(
    platform, mqtt_admin, mosquitto_server, tmp_path, unique_id, signing_key, skew, code, says
) -> None:
    state_dir = await new_device(mqtt_admin, mosquitto_server, tmp_path, unique_id, signing_key)
    old = bias_model(0.25)
    seed_installed(state_dir, "m", "1.0.0", 1, old)
    info = await put(platform.store, bias_model(0.75))
    # A device clock off by `skew` sees the platform's times shifted by `-skew`.
    now = int(time.time()) - skew
    async with running(EdgeRuntime(state_dir)) as rt:
        m = manifest_for(platform.store, info, device_id=rt.device_id,
                         public_key=device_public_key(state_dir), sequence=2,
                         issued_at=now, expires_at=now + 3600)  # fmt: skip
        await platform.publish_manifest(m)
        await rt.wait_for(lambda r: r.snapshot().rejection is not None, 20)
        rejection = rt.snapshot().rejection
        assert rejection is not None
        assert rejection.code is code
        assert rejection.deployment_id == m.deployment_id
        assert says in rejection.detail
        # Nothing was fetched, nothing was accepted, the old model still answers.
        assert rt.stats["chunks_requested"] == 0
        assert rt.state.sequences() == {"m": 1}
        assert float((await rt.infer())["y"].flat[0]) == pytest.approx(1.25)

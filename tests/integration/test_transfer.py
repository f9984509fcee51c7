"""The transfer on a real Mosquitto (project config, auth on): device runtime against the
chunk server, without the deployer. Attacks are made by a platform-side client."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime import EdgeRuntime
from schemas import crypto
from schemas.events import TargetState
from schemas.transfer import CHUNK_ARTIFACT_PROPERTY, CHUNK_INDEX_PROPERTY, RejectionCode
from services.common.artifacts import ArtifactStore
from services.common.mqtt_admin import SERVICE_ROLE
from tests.support.deploy import (
    TOPICS,
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

CHUNK = 4096


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(root=tmp_path / "store", kek=os.urandom(32), chunk_size=CHUNK)


@pytest.fixture
async def platform(mosquitto_server, mqtt_user, store, signing_key) -> AsyncIterator[FakePlatform]:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    async with fake_platform(service_mqtt(mosquitto_server, *user), store, signing_key) as p:
        yield p


@pytest.fixture
def device(mosquitto_server, mqtt_admin, signing_key, tmp_path, unique_id):
    async def make(**kw: object) -> tuple[str, Path]:
        device_id = unique_id("dev-")
        state_dir = tmp_path / device_id
        await enroll_device(mqtt_admin, mosquitto_server, state_dir, device_id, signing_key, **kw)  # type: ignore[arg-type]
        return device_id, state_dir

    return make


def state_is(deployment_id: str, *states: TargetState) -> Callable[[EdgeRuntime], bool]:
    def check(rt: EdgeRuntime) -> bool:
        p = rt.snapshot().deployment
        return p is not None and p.deployment_id == deployment_id and p.state in states

    return check


async def deploy(
    platform: FakePlatform, rt: EdgeRuntime, state_dir: Path, data: bytes, *, sequence: int,
    version: str = "1.0.0", timeout: float = 30.0, **kw: Any,
) -> str:  # fmt: skip
    info = await put(platform.store, data)
    m = manifest_for(
        platform.store, info, device_id=rt.device_id, public_key=device_public_key(state_dir),
        sequence=sequence, version=version, **kw,
    )  # fmt: skip
    await platform.publish_manifest(m)
    await rt.wait_for(
        state_is(m.deployment_id, TargetState.ACTIVE, TargetState.FAILED, TargetState.ROLLED_BACK),
        timeout,
    )
    return m.deployment_id


async def test_model_arrives_byte_identical_and_serves(platform, device) -> None:
    _device_id, state_dir = await device()
    data = padded_model(100_000, seed=1)
    async with running(EdgeRuntime(state_dir)) as rt:
        dep = await deploy(platform, rt, state_dir, data, sequence=1)
        assert rt.snapshot().deployment.state is TargetState.ACTIVE  # type: ignore[union-attr]
        info_id = rt.active.artifact_id  # type: ignore[union-attr]
        assert (state_dir / "models" / f"{info_id}.onnx").read_bytes() == data
        out = await rt.infer()
        assert out["y"].shape == (1, 4)
        assert rt.stats["chunks_received"] == crypto.chunk_count(len(data), CHUNK)
        assert dep


async def old_model_serves(rt: EdgeRuntime, version: str) -> None:
    assert rt.active is not None and rt.active.version == version
    out = await rt.infer()
    assert out["y"].shape == (1, 4)


async def refused_with(rt: EdgeRuntime, code: RejectionCode, timeout: float = 20.0) -> None:
    await rt.wait_for(
        lambda r: r.snapshot().rejection is not None and r.snapshot().rejection.code is code,  # type: ignore[union-attr]
        timeout,
    )


@pytest.fixture
async def serving(platform, device) -> AsyncIterator[tuple[EdgeRuntime, Path]]:
    """A device running version 1.0.0 (sequence 5)."""
    _, state_dir = await device()
    async with running(EdgeRuntime(state_dir)) as rt:
        await deploy(platform, rt, state_dir, bias_model(0.1), sequence=5, version="1.0.0")
        await old_model_serves(rt, "1.0.0")
        yield rt, state_dir


async def test_flipped_bit_in_a_chunk_is_refused(platform, serving) -> None:
    rt, state_dir = serving

    def flip(topic: str, payload: bytes, props):
        data = bytearray(payload)
        data[len(data) // 2] ^= 0x01
        return bytes(data), props

    platform.publisher.tamper = flip
    dep = await deploy(platform, rt, state_dir, padded_model(30_000, seed=2), sequence=6,
                       version="2.0.0")  # fmt: skip
    progress = rt.snapshot().deployment
    assert progress is not None and progress.deployment_id == dep
    assert progress.state is TargetState.FAILED
    assert progress.error_code is RejectionCode.CHUNK_INTEGRITY
    await old_model_serves(rt, "1.0.0")


async def test_more_bytes_than_declared_are_refused(platform, serving) -> None:
    rt, state_dir = serving
    platform.publisher.tamper = lambda t, p, props: (p + b"\0" * 16, props)
    await deploy(platform, rt, state_dir, padded_model(30_000, seed=3), sequence=6,
                 version="2.0.0")  # fmt: skip
    progress = rt.snapshot().deployment
    assert progress is not None and progress.state is TargetState.FAILED
    assert progress.error_code is RejectionCode.CHUNK_SIZE
    await old_model_serves(rt, "1.0.0")


async def test_manifest_declaring_fewer_bytes_is_refused(platform, serving) -> None:
    rt, state_dir = serving
    data = padded_model(30_000, seed=4)
    info = await put(platform.store, data)
    # The manifest claims one chunk less than the artifact holds: the stored chunks no
    # longer fit the declared sizes, and the final size/digest could never match.
    size = (info.chunk_count - 1) * CHUNK
    m = manifest_for(
        platform.store, info, device_id=rt.device_id, public_key=device_public_key(state_dir),
        sequence=6, version="2.0.0", size=size, chunk_count=info.chunk_count - 1,
    )  # fmt: skip
    await platform.publish_manifest(m)
    await rt.wait_for(state_is(m.deployment_id, TargetState.FAILED), 30)
    assert rt.snapshot().deployment.error_code in (
        RejectionCode.CHUNK_INTEGRITY,
        RejectionCode.CHUNK_SIZE,
    )
    await old_model_serves(rt, "1.0.0")


async def test_chunk_from_another_artifact_is_refused(platform, serving) -> None:
    rt, state_dir = serving
    other = await put(platform.store, padded_model(30_000, seed=5))

    def foreign(topic: str, payload: bytes, props):
        # The same index of another artifact, labelled as the requested one.
        pairs = dict(props.UserProperty)
        index = int(pairs[CHUNK_INDEX_PROPERTY])
        data = os.pread(
            os.open(platform.store.path(other.artifact_id), os.O_RDONLY),
            other.stored_len(min(index, other.chunk_count - 1)),
            other.offset(min(index, other.chunk_count - 1)),
        )
        return data, props

    platform.publisher.tamper = foreign
    await deploy(platform, rt, state_dir, padded_model(30_000, seed=6), sequence=6,
                 version="2.0.0")  # fmt: skip
    progress = rt.snapshot().deployment
    assert progress is not None and progress.state is TargetState.FAILED
    assert progress.error_code in (RejectionCode.CHUNK_INTEGRITY, RejectionCode.CHUNK_SIZE)
    await old_model_serves(rt, "1.0.0")


async def test_chunk_labelled_for_another_artifact_is_ignored_and_reported(
    platform, serving
) -> None:
    rt, state_dir = serving
    other = "ab" * 32

    def relabel(topic: str, payload: bytes, props):
        pairs = dict(props.UserProperty)
        props.UserProperty = [
            (CHUNK_ARTIFACT_PROPERTY, other),
            (CHUNK_INDEX_PROPERTY, pairs[CHUNK_INDEX_PROPERTY]),
        ]
        return payload, props

    platform.publisher.tamper = relabel
    info = await put(platform.store, padded_model(30_000, seed=7))
    m = manifest_for(
        platform.store, info, device_id=rt.device_id, public_key=device_public_key(state_dir),
        sequence=6, version="2.0.0",
    )  # fmt: skip
    await platform.publish_manifest(m)
    await refused_with(rt, RejectionCode.FOREIGN_CHUNK)
    assert rt.snapshot().deployment.state is TargetState.DOWNLOADING
    assert rt.snapshot().deployment.chunks_received == 0
    await old_model_serves(rt, "1.0.0")


async def test_manifest_signed_by_another_key_is_refused(platform, serving) -> None:
    rt, state_dir = serving
    info = await put(platform.store, bias_model(0.9))
    m = manifest_for(
        platform.store, info, device_id=rt.device_id, public_key=device_public_key(state_dir),
        sequence=9, version="9.0.0",
    )  # fmt: skip
    await platform.publish_manifest(m, key=Ed25519PrivateKey.generate())
    await refused_with(rt, RejectionCode.SIGNATURE)
    await old_model_serves(rt, "1.0.0")


async def test_older_manifest_replayed_is_refused(platform, serving) -> None:
    rt, state_dir = serving
    info = await put(platform.store, bias_model(0.7))
    # Properly signed, unexpired, but sequence 4 < 5, the one the device runs.
    m = manifest_for(
        platform.store, info, device_id=rt.device_id, public_key=device_public_key(state_dir),
        sequence=4, version="0.9.0",
    )  # fmt: skip
    await platform.publish_manifest(m)
    await refused_with(rt, RejectionCode.REPLAY)
    await old_model_serves(rt, "1.0.0")


async def test_expired_manifest_is_refused(platform, serving) -> None:
    rt, state_dir = serving
    info = await put(platform.store, bias_model(0.6))
    m = manifest_for(
        platform.store, info, device_id=rt.device_id, public_key=device_public_key(state_dir),
        sequence=7, version="3.0.0", issued_at=1_000, expires_at=2_000,
    )  # fmt: skip
    await platform.publish_manifest(m)
    await refused_with(rt, RejectionCode.EXPIRED)
    await old_model_serves(rt, "1.0.0")


async def test_manifest_for_another_device_is_refused(platform, serving, device) -> None:
    rt, _state_dir = serving
    other_id, other_dir = await device()
    info = await put(platform.store, bias_model(0.4))
    m = manifest_for(
        platform.store, info, device_id=other_id, public_key=device_public_key(other_dir),
        sequence=7, version="3.0.0",
    )  # fmt: skip
    # Published where this device listens: the signature is fine, the device id is not.
    signed = m.sign(platform.signing_key)
    await platform.publish_raw(rt.device_id, signed.to_bytes())
    await refused_with(rt, RejectionCode.WRONG_DEVICE)
    await old_model_serves(rt, "1.0.0")


async def test_key_sealed_for_another_device_is_refused(platform, serving) -> None:
    rt, state_dir = serving
    info = await put(platform.store, bias_model(0.3))
    m = manifest_for(
        platform.store, info, device_id=rt.device_id, public_key=device_public_key(state_dir),
        sequence=7, version="3.0.0", seal_for="someone-else",
    )  # fmt: skip
    await platform.publish_manifest(m)
    await refused_with(rt, RejectionCode.SEALED_KEY)
    await old_model_serves(rt, "1.0.0")


async def test_model_failing_health_inference_rolls_back(platform, serving) -> None:
    rt, state_dir = serving
    dep = await deploy(platform, rt, state_dir, bias_model(0.2, nan=True), sequence=6,
                       version="2.0.0")  # fmt: skip
    progress = rt.snapshot().deployment
    assert progress is not None and progress.deployment_id == dep
    assert progress.state is TargetState.ROLLED_BACK
    assert progress.error_code is RejectionCode.HEALTH_CHECK
    await old_model_serves(rt, "1.0.0")


async def test_state_is_published_retained(platform, serving, mosquitto_server, mqtt_user) -> None:
    import aiomqtt

    from schemas.transfer import DeviceState

    rt, _ = serving
    user = await mqtt_user(roles=[SERVICE_ROLE])
    async with aiomqtt.Client(
        mosquitto_server.host, mosquitto_server.port, username=user[0], password=user[1],
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:  # fmt: skip
        await client.subscribe(TOPICS.state(rt.device_id), qos=1)
        await client.subscribe(TOPICS.online(rt.device_id), qos=1)
        seen: dict[str, bytes] = {}
        import asyncio

        def active_version() -> str | None:
            raw = seen.get(TOPICS.state(rt.device_id))
            state = DeviceState.model_validate_json(raw) if raw else None
            return state.active.version if state and state.active else None

        # The reporter may still be publishing the last transitions: read until it lands.
        async with asyncio.timeout(10):
            async for message in client.messages:
                seen[str(message.topic)] = bytes(message.payload)
                if len(seen) == 2 and active_version() == "1.0.0":
                    break
    assert active_version() == "1.0.0"
    assert seen[TOPICS.online(rt.device_id)] == b"1"

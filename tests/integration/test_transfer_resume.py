"""Interrupted transfers: the runtime killed half way, the broker restarted half way."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime import EdgeRuntime, StateDir
from edgeaiforge_stack.servers import MosquittoServer
from schemas.events import TargetState
from services.common.artifacts import ArtifactStore
from services.common.mqtt_admin import SERVICE_ROLE, MqttAdmin, provision_platform
from tests.support.deploy import (
    device_public_key,
    enroll_device,
    fake_platform,
    forget_device,
    manifest_for,
    padded_model,
    put,
    running,
    service_mqtt,
)

CHUNK = 65536


def bitmap(state_dir: Path, artifact_id: str) -> bytes:
    path = state_dir / "staging" / artifact_id / "bitmap"
    return path.read_bytes() if path.exists() else b""


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_killed_runtime_resumes_with_only_the_missing_chunks(
    mosquitto_server, mqtt_admin, mqtt_user, tmp_path, unique_id
) -> None:
    key = Ed25519PrivateKey.generate()
    store = ArtifactStore(root=tmp_path / "store", kek=os.urandom(32), chunk_size=CHUNK)
    data = padded_model(8 * 1024 * 1024, seed=11)
    info = await put(store, data)
    device_id = unique_id("dev-")
    state_dir = tmp_path / device_id
    await enroll_device(mqtt_admin, mosquitto_server, state_dir, device_id, key, window=4)
    user = await mqtt_user(roles=[SERVICE_ROLE])
    command = [sys.executable, "-m", "edge_runtime", "run", "--state-dir", str(state_dir),
               "--http", "", "--stall-timeout", "2"]  # fmt: skip
    log = (tmp_path / "runtime.log").open("ab")
    async with fake_platform(service_mqtt(mosquitto_server, *user), store, key) as platform:
        platform.publisher.delay = 0.03  # about 1 s per 128 chunks at window 4
        m = manifest_for(store, info, device_id=device_id,
                         public_key=device_public_key(state_dir), sequence=1)  # fmt: skip
        await platform.publish_manifest(m)
        proc = subprocess.Popen(command, stderr=log)
        try:
            half = info.chunk_count // 2
            await wait_until(lambda: sum(bitmap(state_dir, info.artifact_id)) >= half, 60,
                             "half the chunks")  # fmt: skip
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        on_disk = bitmap(state_dir, info.artifact_id)
        had = {i for i, got in enumerate(on_disk) if got}
        missing = set(range(info.chunk_count)) - had
        assert 0 < len(missing) < info.chunk_count
        await asyncio.sleep(0.5)  # chunks in flight to the dead process drain away
        served_before = dict(platform.server.served)
        platform.publisher.delay = 0.0
        proc = subprocess.Popen(command, stderr=log)
        try:
            state = StateDir(state_dir)
            await wait_until(
                lambda: state.installed().active is not None, 60, "the model to be active"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            await forget_device(state_dir)
    after = {
        k[2]: n - served_before.get(k, 0)
        for k, n in platform.server.served.items()
        if k[0] == device_id and n > served_before.get(k, 0)
    }
    # Only what the bitmap lacked was asked for again, each chunk once.
    assert set(after) == missing
    assert sum(after.values()) == len(missing)
    assert (state_dir / "models" / f"{info.artifact_id}.onnx").read_bytes() == data


async def test_broker_restart_mid_transfer_completes(tmp_path, unique_id) -> None:
    key = Ed25519PrivateKey.generate()
    store = ArtifactStore(root=tmp_path / "store", kek=os.urandom(32), chunk_size=CHUNK)
    data = padded_model(6 * 1024 * 1024, seed=12)
    info = await put(store, data)
    server = MosquittoServer(data_dir=tmp_path / "mosquitto")
    with server:
        async with MqttAdmin(hostname=server.host, port=server.port,
                             username=server.admin_username,
                             password=server.admin_password) as admin:  # fmt: skip
            await provision_platform(admin)
            await admin.create_client("svc", "svc-pw", roles=[SERVICE_ROLE])
            device_id = unique_id("dev-")
            state_dir = tmp_path / device_id
            await enroll_device(admin, server, state_dir, device_id, key, window=4)
        config = service_mqtt(server, "svc", "svc-pw")
        async with fake_platform(config, store, key) as platform:
            platform.publisher.delay = 0.03
            runtime = EdgeRuntime(state_dir, reconnect_max=1.0)
            async with running(runtime) as rt:
                m = manifest_for(store, info, device_id=device_id,
                                 public_key=device_public_key(state_dir), sequence=1)  # fmt: skip
                await platform.publish_manifest(m)
                await wait_until(lambda: rt.stats["chunks_received"] >= info.chunk_count // 2,
                                 60, "half the chunks")  # fmt: skip
                await asyncio.to_thread(server.stop)
                received_at_stop = rt.stats["chunks_received"]
                await asyncio.sleep(1.0)
                await asyncio.to_thread(server.start)
                await rt.wait_for(
                    lambda r: r.active is not None and r.active.artifact_id == info.artifact_id,
                    60,
                )
                assert received_at_stop < info.chunk_count
                assert rt.stats["connections"] >= 2
                assert rt.snapshot().deployment.state is TargetState.ACTIVE  # type: ignore[union-attr]
    assert (state_dir / "models" / f"{info.artifact_id}.onnx").read_bytes() == data

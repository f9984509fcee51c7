"""Power loss during activation: the runtime process ends abruptly (``os._exit``, no
cleanup) at each activation step in turn. Whatever the step, the device comes back
serving one whole model, the old or the new, never a mix; and it then finishes the
deployment it was given. Real Mosquitto, real ``edge-runtime`` processes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime import EdgeRuntime, StateDir
from edge_runtime._faults import ENV_CRASH_AT, FAULT_EXIT_STATUS, STEPS
from schemas.events import TargetState
from services.common.artifacts import ArtifactStore
from services.common.mqtt_admin import SERVICE_ROLE
from tests.support.deploy import (
    FakePlatform,
    bias_model,
    device_public_key,
    enroll_device,
    fake_platform,
    manifest_for,
    put,
    running,
    service_mqtt,
)
from tests.support.resilience import seed_installed, sha256, start_runtime_process

OLD_BIAS, NEW_BIAS = 0.25, 0.75
#: The steps after which ``installed.json`` already names the new model.
NEW_FROM = ("installed", "recorded")


def served_bias(output: Mapping[str, object]) -> float:
    # bias_model answers relu(x + b); the runtime's sample input is all ones.
    return round(float(output["y"].flat[0]) - 1.0, 3)  # type: ignore[attr-defined]


async def crash_then_recover(
    platform: FakePlatform, admin, server, key: Ed25519PrivateKey, tmp: Path,
    step: str, device_id: str, old: bytes, new: bytes,
) -> None:  # fmt: skip
    state_dir = tmp / device_id
    await enroll_device(admin, server, state_dir, device_id, key, window=8, stall=1.0)
    seed_installed(state_dir, "m", "1.0.0", 1, old)
    info = await put(platform.store, new)
    manifest = manifest_for(
        platform.store, info, device_id=device_id, public_key=device_public_key(state_dir),
        sequence=2, version="2.0.0",
    )  # fmt: skip
    await platform.publish_manifest(manifest)
    log = tmp / f"{step}.log"
    proc = await start_runtime_process(state_dir, log, env={ENV_CRASH_AT: step})
    try:
        status = await asyncio.wait_for(proc.wait(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert status == FAULT_EXIT_STATUS, f"{step}: exit {status}\n{log.read_text()[-3000:]}"

    # On disk, right after the cut: the active model's file is whole and is old or new.
    state = StateDir(state_dir)
    active = state.installed().active
    assert active is not None
    expected = new if step in NEW_FROM else old
    assert active.artifact_id == sha256(expected), f"{step}: {active}"
    assert sha256(state.model_path(active.artifact_id).read_bytes()) == active.artifact_id

    # Back on: it serves a whole model at once, and then completes the deployment.
    runtime = EdgeRuntime(state_dir)
    async with running(runtime) as rt:
        first = served_bias(await rt.infer())
        assert first in (OLD_BIAS, NEW_BIAS), f"{step}: served bias {first}"
        await rt.wait_for(
            lambda r: (
                (p := r.snapshot().deployment) is not None
                and p.deployment_id == manifest.deployment_id
                and p.state is TargetState.ACTIVE
            ),
            60,
        )
        assert served_bias(await rt.infer()) == NEW_BIAS
        installed = rt.state.installed()
        assert installed.active is not None and installed.active.version == "2.0.0"
        # The old model is kept as the rollback target, whole.
        assert installed.previous is not None and installed.previous.artifact_id == sha256(old)
        assert rt.state.model_path(sha256(old)).read_bytes() == old
    assert state.model_path(info.artifact_id).read_bytes() == new


@pytest.mark.slow
async def test_power_cut_at_each_activation_step_leaves_a_whole_model(
    mosquitto_server, mqtt_admin, mqtt_user, tmp_path, unique_id
) -> None:
    key = Ed25519PrivateKey.generate()
    store = ArtifactStore(root=tmp_path / "store", kek=os.urandom(32), chunk_size=4096)
    old, new = bias_model(OLD_BIAS), bias_model(NEW_BIAS)
    user = await mqtt_user(roles=[SERVICE_ROLE])
    async with fake_platform(service_mqtt(mosquitto_server, *user), store, key) as platform:
        # One device per step, all at once: each is its own process and state directory.
        args = (platform, mqtt_admin, mosquitto_server, key, tmp_path)
        runs = [crash_then_recover(*args, s, unique_id(f"dev-{s}-"), old, new) for s in STEPS]
        await asyncio.gather(*runs)

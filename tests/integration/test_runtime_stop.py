"""Stopping the device runtime: ``edge-runtime run`` on real Mosquitto and the deployer.

SIGTERM ends it within about two seconds whatever it is doing (connected, in back-off,
refused by the broker), with one log line and no traceback; before it leaves it says
``online = 0``, so the platform shows it offline. A device whose credentials the broker
refuses says so, once, in its log and in ``edge-runtime status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime import EdgeRuntime
from edgeaiforge_stack.servers import MosquittoServer, free_port
from schemas.deployer import DeployerRpc, RemoveDevice
from services.common.mqtt_admin import MqttAdmin
from tests.support.deploy import (
    enroll_device,
    enroll_via_rpc,
    forget_device,
)
from tests.support.deployer_env import Env, EnvFactory

NOT_AUTHORIZED = (
    "not authorized: this device was removed or its credentials revoked; enrol it again"
)


class Device:
    """``edge-runtime run`` in a subprocess, its stderr in a file."""

    def __init__(self, state_dir: Path, log: Path) -> None:
        self.state_dir = state_dir
        self.log = log
        command = [
            sys.executable, "-m", "edge_runtime", "run", "--state-dir", str(state_dir),
            "--http", f"127.0.0.1:{free_port()}", "--simulate", "20", "--metrics-interval", "1",
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stderr=log.open("ab"))

    def text(self) -> str:
        return self.log.read_text()

    def status(self) -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-m", "edge_runtime", "status", "--state-dir", str(self.state_dir)],
            capture_output=True, check=True, timeout=30,
        )  # fmt: skip
        found: dict[str, object] = json.loads(out.stdout)
        return found

    def stop(self) -> tuple[float, list[str]]:
        """SIGTERM; returns the seconds until it exited and the lines it logged meanwhile."""
        before = len(self.text())
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        took = time.monotonic() - started
        return took, [line for line in self.text()[before:].splitlines() if line.strip()]


@contextlib.asynccontextmanager
async def online_device(env: Env, state_dir: Path, device_id: str) -> AsyncIterator[Device]:
    """An enrolled ``edge-runtime run`` the platform sees online; killed if still running."""
    await enroll_via_rpc(env.bus, state_dir, device_id)
    device = Device(state_dir, state_dir.parent / f"{device_id}.log")
    try:
        await env.until_online(device_id, True, 20)
        yield device
    finally:
        if device.proc.poll() is None:
            device.proc.kill()


async def stops_cleanly(device: Device) -> None:
    """SIGTERM ends it within 3 s, with one log line and no traceback."""
    took, lines = await asyncio.to_thread(device.stop)
    assert took < 3.0, f"took {took:.1f} s to stop"
    assert "Traceback" not in device.text(), device.text()
    assert len(lines) == 1 and "stopping" in lines[0], lines


async def until(check: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``check`` (in a thread: it may run ``edge-runtime status``) until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def env(make_env: EnvFactory) -> Env:
    return await make_env()


async def test_sigterm_stops_a_connected_runtime_at_once_and_the_platform_shows_it_offline(
    env: Env, unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    device_id = unique_id("dev-")
    state_dir = tmp_path / device_id
    try:
        async with online_device(env, state_dir, device_id) as device:
            assert device.status()["connection"]["state"] == "connected"  # type: ignore[index]
            await asyncio.sleep(1.5)  # a metrics batch, inference, the HTTP server: all busy
            await stops_cleanly(device)
            assert device.proc.returncode == 0
            # It said goodbye: no will needed (a clean disconnect sends none).
            await env.until_online(device_id, False, 3)
            assert device.status()["connection"]["state"] == "stopped"  # type: ignore[index]
    finally:
        await forget_device(state_dir)


async def test_a_removed_device_says_not_authorized_and_stops_at_once_from_its_back_off(
    env: Env, unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    device_id = unique_id("dev-")
    async with online_device(env, tmp_path / device_id, device_id) as device:
        await env.bus.call(
            DeployerRpc.REMOVE_DEVICE, RemoveDevice(device_id=device_id, removed_by="test")
        )

        def refused() -> bool:
            connection = device.status()["connection"]
            return connection["state"] == "not_authorized"  # type: ignore[index,no-any-return]

        await until(refused, 15, "the status to say not authorized")
        assert device.text().count(NOT_AUTHORIZED) == 1, device.text()
        # It waits long before trying again; a stop does not wait for that.
        await stops_cleanly(device)


async def test_refusals_are_logged_once_and_retried_slower_than_network_errors(
    env: Env, unique_id: Callable[[str], str], tmp_path: Path
) -> None:
    device_id = unique_id("dev-")
    state_dir = tmp_path / device_id
    await enroll_via_rpc(env.bus, state_dir, device_id)
    await env.bus.call(
        DeployerRpc.REMOVE_DEVICE, RemoveDevice(device_id=device_id, removed_by="test")
    )
    lines: list[str] = []
    runtime = EdgeRuntime(state_dir, reconnect_min=0.05, reconnect_max=0.05, log=lines.append)
    runtime.reconnect_refused = 0.1  # fast here, to see several attempts
    task = asyncio.create_task(runtime.run())
    try:
        await until(lambda: runtime.stats["refused"] >= 3, 15, "three refusals")
        assert lines.count(NOT_AUTHORIZED) == 1, lines
        assert runtime.connection.state == "not_authorized"
    finally:
        runtime.stop()
        await asyncio.wait_for(task, 3)


async def test_a_runtime_in_a_long_back_off_stops_at_once(
    mqtt_admin: MqttAdmin,
    mosquitto_server: MosquittoServer,
    tmp_path: Path,
    unique_id: Callable[[str], str],
) -> None:
    device_id = unique_id("dev-")
    state_dir = tmp_path / device_id
    await enroll_device(
        mqtt_admin, mosquitto_server, state_dir, device_id, Ed25519PrivateKey.generate()
    )
    lines: list[str] = []
    # No broker listens there: every attempt fails at once, then a back-off of up to 120 s.
    runtime = EdgeRuntime(
        state_dir, mqtt_port=free_port(), reconnect_min=120, reconnect_max=120, log=lines.append
    )
    task = asyncio.create_task(runtime.run())
    await until(lambda: any("reconnecting" in line for line in lines), 10, "a failed attempt")
    assert runtime.connection.state == "disconnected"
    started = time.monotonic()
    runtime.stop()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 1.0
    assert runtime.connection.state == "stopped"

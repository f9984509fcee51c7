"""The platform pieces the benchmarks drive: a deployer in-process, enrolled devices,
models of a given size, and a watcher of the devices' ``state`` reports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edge_runtime import complete, prepare
from schemas.config import Settings
from schemas.deployer import (
    CreateDeployment,
    CreateEnrollmentToken,
    DeployerRpc,
    DeploymentInfo,
    DeviceRef,
    EnrollReply,
    TargetSelector,
)
from services.common.artifacts import ArtifactInfo, ArtifactStore
from services.common.bus import Bus
from services.common.errors import NotFound
from services.common.keys import load_kek
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import DeployerApp, create_service
from services.deployer.catalog import VersionToDeploy
from services.deployer.mqtt import cancel_and_wait
from tests.support.servers import Servers
from tests.support.settings import platform_settings

PREFIX = "eaf/v1"


def matmul_model(size_bytes: int) -> bytes:
    """A valid ONNX model of about ``size_bytes``: ``y = x @ W`` with float32 weights.

    The weights are pseudo-random (incompressible, like trained weights), so neither the
    broker nor the disk gets an easy ride.
    """
    rows = 256
    cols = max(1, size_bytes // (4 * rows))
    rng = np.random.default_rng(size_bytes)
    weights = rng.standard_normal((rows, cols), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")],
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


class Catalog:
    """Stands in for the registry: the versions put here resolve."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], VersionToDeploy] = {}

    def add(self, model: str, version: str, info: ArtifactInfo) -> None:
        self.versions[(model, version)] = VersionToDeploy(
            model, version, info.artifact_id, info.size, "validated", None
        )

    async def resolve(self, model: str, ref: str) -> VersionToDeploy:
        entry = self.versions.get((model, ref.removeprefix("@")))
        if entry is None:
            raise NotFound(f"{model}@{ref} is not in the benchmark's catalog")
        return entry


@dataclass
class Platform:
    app: DeployerApp
    bus: Bus
    settings: Settings
    store: ArtifactStore
    catalog: Catalog
    workdir: Path

    async def put(self, data: bytes) -> ArtifactInfo:
        async def stream() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 1 << 20):
                yield data[i : i + (1 << 20)]

        return (await self.store.put(stream())).info

    async def enroll(self, device_id: str, *, group: str | None = None) -> EnrollReply:
        """What ``edge-runtime enroll`` does, with the REST hop replaced by the RPC."""
        token = await self.bus.call(
            DeployerRpc.CREATE_ENROLLMENT_TOKEN,
            CreateEnrollmentToken(device_id=device_id, group=group),
        )
        state_dir = self.state_dir(device_id)
        request = prepare(state_dir, device_id=device_id, token=token.token)
        reply: EnrollReply = await self.bus.call(DeployerRpc.ENROLL, request)
        complete(state_dir, reply)
        return reply

    def state_dir(self, device_id: str) -> Path:
        return self.workdir / "devices" / device_id

    async def deploy(self, model: str, version: str, target: TargetSelector) -> DeploymentInfo:
        info: DeploymentInfo = await self.bus.call(
            DeployerRpc.CREATE_DEPLOYMENT,
            CreateDeployment(model=model, version=version, target=target),
        )
        return info


def settings_for(servers: Servers, workdir: Path, service_user: tuple[str, str]) -> Settings:
    """The deployer's settings: the shipped defaults, on the benchmark's servers."""
    return platform_settings(
        workdir,
        nats_url=servers.nats.url,
        database_file="deployer.db",
        broker=servers.mosquitto,
        mqtt_user=service_user,
    )


@contextlib.asynccontextmanager
async def platform(servers: Servers, workdir: Path) -> AsyncIterator[Platform]:
    """A deployer (with its chunk server) on the benchmark's servers."""
    workdir.mkdir(parents=True, exist_ok=True)
    user = await servers.mqtt_user(roles=[SERVICE_ROLE])
    settings = settings_for(servers, workdir, user)
    catalog = Catalog()
    async with create_service(settings, catalog=catalog) as app:
        store = ArtifactStore(
            root=settings.model_repository.storage_path,
            kek=load_kek(settings.security),
            chunk_size=settings.deployment.chunk_size,
        )
        yield Platform(app, app.bus, settings, store, catalog, workdir)


class StateWatcher:
    """Follows ``devices/+/state`` and records when each device reports a model active."""

    def __init__(self, servers: Servers, user: tuple[str, str]) -> None:
        self.servers = servers
        self.user = user
        self.active_at: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self._wanted: set[str] = set()
        self._artifact = ""
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def expect(self, devices: Iterable[str], artifact_id: str) -> None:
        self._wanted = set(devices)
        self._artifact = artifact_id
        self.active_at.clear()
        self._done.clear()

    async def __aenter__(self) -> StateWatcher:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 15)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task], again_after=1.0)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, timeout: float) -> None:
        """Until every expected device is active; ``TimeoutError`` after ``timeout``, and
        ``RuntimeError`` at once if the watcher's connection ends (it would miss reports)."""
        assert self._task is not None
        done = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait({done, self._task}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            done.cancel()
        if self._done.is_set():
            return
        if self._task.done():
            error = None if self._task.cancelled() else self._task.exception()
            raise RuntimeError(f"the state watcher stopped: {error!r}")
        raise TimeoutError

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        async with aiomqtt.Client(
            self.servers.mosquitto.host,
            self.servers.mosquitto.port,
            username=self.user[0],
            password=self.user[1],
            identifier=f"bench-watch-{secrets.token_hex(3)}",
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:
            await client.subscribe(f"{PREFIX}/devices/+/state", qos=1)
            self._ready.set()
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes) or not payload:
                    continue
                state: dict[str, Any] = json.loads(payload)
                device = state.get("device_id", "")
                active = state.get("active") or {}
                if device not in self._wanted:
                    continue
                progress = state.get("deployment") or {}
                if progress.get("state") in ("failed", "rolled_back"):
                    self.failed[device] = str(progress.get("detail"))
                if active.get("artifact_id") == self._artifact and device not in self.active_at:
                    self.active_at[device] = loop.time()
                    if len(self.active_at) == len(self._wanted):
                        self._done.set()


@contextlib.asynccontextmanager
async def device_process(
    p: Platform, device: str, workdir: Path
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """``python -m edge_runtime run`` for an enrolled ``device`` in its own process, as a
    device runs it; yields once the deployer sees it online, and stops it on exit."""
    cmd = [sys.executable, "-m", "edge_runtime", "run", "--state-dir", str(p.state_dir(device))]
    with (workdir / f"{device}.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            await _wait_online(p, device)
            yield proc
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 30)


async def _wait_online(p: Platform, device: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = await p.bus.call(DeployerRpc.GET_DEVICE, DeviceRef(device_id=device))
        if info.online:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"device {device} did not come online within 60 s")

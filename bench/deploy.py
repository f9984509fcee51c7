"""Deployment figures: one device (``transfer_ratio``) and a fleet (``fanout_ratio``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bench import baselines
from bench._common import Result
from bench._platform import Platform, StateWatcher, device_process, matmul_model, platform
from edge_runtime import EdgeRuntime
from schemas.deployer import TargetSelector
from tests.support.servers import Servers

MB = 1_000_000
MiB = 1 << 20


@contextlib.asynccontextmanager
async def running(runtimes: list[EdgeRuntime]) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(rt.run()) for rt in runtimes]
    try:
        await asyncio.wait_for(asyncio.gather(*(rt.wait_connected() for rt in runtimes)), 60)
        yield
    finally:
        for rt in runtimes:
            rt.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def deploy_and_wait(
    p: Platform, watcher: StateWatcher, devices: list[str], model: str, data: bytes, *,
    target: TargetSelector, timeout: float,
) -> tuple[float, dict[str, float]]:  # fmt: skip
    """Seconds from the deployment request until every device reports the model active."""
    info = await p.put(data)
    p.catalog.add(model, "1.0.0", info)
    watcher.expect(devices, info.artifact_id)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await p.deploy(model, "1.0.0", target)
    try:
        await watcher.wait(timeout)
    except TimeoutError:
        raise RuntimeError(
            f"{len(watcher.active_at)}/{len(devices)} devices active after {timeout:.0f} s; "
            f"failures: {dict(list(watcher.failed.items())[:3])}"
        ) from None
    return loop.time() - start, {d: t - start for d, t in watcher.active_at.items()}


async def transfer(servers: Servers, workdir: Path, *, size_mb: int = 64) -> Result:
    """A full deployment of a ``size_mb`` MiB model to one device in its own process."""
    data = matmul_model(size_mb * MiB)
    async with platform(servers, workdir) as p:
        chunk = p.settings.deployment.chunk_size
        device = "bench-transfer-1"
        await p.enroll(device)
        async with (
            device_process(p, device, workdir),
            StateWatcher(servers, servers.service_user) as watcher,
        ):
            seconds, _ = await deploy_and_wait(
                p, watcher, [device], "bench-transfer", data,
                target=TargetSelector(device_id=device), timeout=300,
            )  # fmt: skip
    raw = await asyncio.to_thread(
        baselines.raw_mqtt_mb_per_s,
        servers.mosquitto.host,
        servers.mosquitto.port,
        servers.service_user,
        chunk_size=chunk,
        total_bytes=len(data),
    )
    ours = len(data) / MB / seconds
    return Result(
        key="transfer_ratio",
        what=f"{len(data) / MB:.0f} MB deployment to 1 device ÷ raw paho QoS1 pub→sub",
        value=ours / raw["mb_per_s"],
        goal=">= 0.85",
        raw={
            "ours_mb_per_s": round(ours, 1),
            "ours_seconds": round(seconds, 3),
            "baseline_mb_per_s": round(raw["mb_per_s"], 1),
            "baseline_seconds": round(raw["seconds"], 3),
            "bytes": len(data),
            "chunk_size": chunk,
            "window_size": p.settings.deployment.window_size,
            "includes": "deployment request over NATS, manifest, chunk requests, encrypted "
            "chunks from the store, decrypt + write + fdatasync on the device, SHA-256, "
            "onnxruntime load and health inference, the device's 'active' report; the device "
            "is 'python -m edge_runtime run' in its own process, as on a device",
        },
    )


async def fanout(
    servers: Servers, workdir: Path, *, devices: int = 100, size_mb: int = 16
) -> Result:
    """Time until ``devices`` in-process devices run a ``size_mb`` MiB model."""
    data = matmul_model(size_mb * MiB)
    group = "bench-fleet"
    names = [f"{group}-{i:03d}" for i in range(devices)]
    async with platform(servers, workdir) as p:
        chunk = p.settings.deployment.chunk_size
        for name in names:
            await p.enroll(name, group=group)
        runtimes = [EdgeRuntime(p.state_dir(n)) for n in names]
        async with StateWatcher(servers, servers.service_user) as watcher, running(runtimes):
            seconds, per_device = await deploy_and_wait(
                p, watcher, names, "bench-fanout", data,
                target=TargetSelector(group=group), timeout=600,
            )  # fmt: skip
        pulled = sum(rt.stats["chunks_received"] for rt in runtimes)
        requested = sum(rt.stats["chunks_requested"] for rt in runtimes)
        broadcast_chunks = p.app.chunks.broadcast_chunks
        unicast_chunks = p.app.chunks.chunks_sent
    raw = await asyncio.to_thread(
        baselines.raw_fanout_seconds,
        servers.mosquitto.host,
        servers.mosquitto.port,
        servers.service_user,
        subscribers=devices,
        chunk_size=chunk,
        total_bytes=len(data),
    )
    times = sorted(per_device.values())
    return Result(
        key="fanout_ratio",
        what=f"{devices} devices running a {len(data) / MB:.0f} MB model ÷ raw paho fan-out",
        value=seconds / raw["seconds"],
        goal="<= 1.5",
        raw={
            "ours_seconds": round(seconds, 3),
            "first_device_active_s": round(times[0], 3),
            "median_device_active_s": round(times[len(times) // 2], 3),
            "baseline_seconds": round(raw["seconds"], 3),
            "devices": devices,
            "bytes": len(data),
            "chunk_size": chunk,
            "chunks_received_by_devices": pulled,
            "chunks_requested_by_devices": requested,
            "broadcast_chunks": broadcast_chunks,
            "unicast_chunks": unicast_chunks,
            "includes": "deployment request, 100 manifests, one broadcast plus any pulls, "
            "decrypt + write + SHA-256 + onnxruntime load + health inference on each of the "
            "100 devices (all simulated in this one process), every 'active' report",
        },
    )

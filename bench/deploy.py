"""Deployment figures: one device (``transfer_ratio``), a fleet (``fanout_ratio``) and the
edge runtime's memory while it takes a large model (``edge_memory_ratio``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench import baselines
from bench._common import Result, Servers
from bench._platform import Platform, StateWatcher, matmul_model, platform
from edge_runtime import EdgeRuntime
from schemas.deployer import TargetSelector

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


async def _deploy_and_wait(
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
    """A full deployment of a ``size_mb`` MiB model to one in-process device."""
    data = matmul_model(size_mb * MiB)
    async with platform(servers, workdir) as p:
        chunk = p.settings.deployment.chunk_size
        device = "bench-transfer-1"
        await p.enroll(device)
        rt = EdgeRuntime(p.state_dir(device))
        async with StateWatcher(servers, servers.service_user) as watcher, running([rt]):
            seconds, _ = await _deploy_and_wait(
                p, watcher, [device], "bench-transfer", data,
                target=TargetSelector(device_id=device), timeout=300,
            )  # fmt: skip
        stats = dict(rt.stats)
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
            "device_stats": stats,
            "includes": "deployment request over NATS, manifest, chunk requests, encrypted "
            "chunks from the store, decrypt + write + fdatasync on the device, SHA-256, "
            "onnxruntime load and health inference, the device's 'active' report",
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
            seconds, per_device = await _deploy_and_wait(
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


def _vm(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else 0


async def edge_memory(servers: Servers, workdir: Path, *, size_mb: int = 100) -> Result:
    """Peak RSS of ``edge-runtime run`` (its own process) taking a ``size_mb`` MiB model."""
    data = matmul_model(size_mb * MiB)
    async with platform(servers, workdir) as p:
        device = "bench-memory-1"
        await p.enroll(device)
        cmd = [
            sys.executable, "-m", "edge_runtime", "run", "--state-dir", str(p.state_dir(device)),
        ]  # fmt: skip
        log = (workdir / "edge-runtime.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            async with StateWatcher(servers, servers.service_user) as watcher:
                # Idle: connected, no model; let it settle so imports and buffers are done.
                await _wait_online(p, device)
                await asyncio.sleep(2.0)
                idle_hwm = _vm(proc.pid, "VmHWM")
                idle_rss = _vm(proc.pid, "VmRSS")
                seconds, _ = await _deploy_and_wait(
                    p, watcher, [device], "bench-memory", data,
                    target=TargetSelector(device_id=device), timeout=300,
                )  # fmt: skip
                peak = _vm(proc.pid, "VmHWM")
                after = _vm(proc.pid, "VmRSS")
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 30)
            log.close()
    return Result(
        key="edge_memory_ratio",
        what=f"edge runtime peak RSS taking a {len(data) / MB:.0f} MB model, less idle, ÷ size",
        value=(peak - idle_hwm) / len(data),
        goal="<= 1.2",
        raw={
            "idle_peak_rss_mib": round(idle_hwm / MiB, 1),
            "idle_rss_mib": round(idle_rss / MiB, 1),
            "peak_rss_mib": round(peak / MiB, 1),
            "rss_after_activation_mib": round(after / MiB, 1),
            "model_mib": round(len(data) / MiB, 1),
            "deployment_seconds": round(seconds, 3),
            "includes": "the runtime as 'python -m edge_runtime run' in its own process; "
            "VmHWM (peak resident set) from /proc before the deployment and after the model "
            "is active: transfer, verification, onnxruntime load, health inference",
        },
    )


async def _wait_online(p: Platform, device: str) -> None:
    from schemas.deployer import SUBJECTS, DeviceInfo, DeviceRef

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = await p.bus.request(SUBJECTS["get_device"], DeviceRef(device_id=device), DeviceInfo)
        if info.online:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"device {device} did not come online within 60 s")

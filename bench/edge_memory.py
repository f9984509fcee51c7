"""The edge runtime's memory while it takes a large model (``edge_memory_ratio``)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from bench._common import Result
from bench._platform import StateWatcher, device_process, matmul_model, platform
from bench.deploy import MB, MiB, deploy_and_wait
from schemas.deployer import TargetSelector
from tests.support.servers import Servers


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
        async with (
            device_process(p, device, workdir) as proc,
            StateWatcher(servers, servers.service_user) as watcher,
        ):
            # Idle: connected, no model; let it settle so imports and buffers are done.
            await asyncio.sleep(2.0)
            idle_hwm = _vm(proc.pid, "VmHWM")
            idle_rss = _vm(proc.pid, "VmRSS")
            idle_anon, idle_file = _vm(proc.pid, "RssAnon"), _vm(proc.pid, "RssFile")
            seconds, _ = await deploy_and_wait(
                p, watcher, [device], "bench-memory", data,
                target=TargetSelector(device_id=device), timeout=300,
            )  # fmt: skip
            peak = _vm(proc.pid, "VmHWM")
            after = _vm(proc.pid, "VmRSS")
            anon, file = _vm(proc.pid, "RssAnon"), _vm(proc.pid, "RssFile")
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
            # Where the resident set is: heap (anonymous) or mapped files (the libraries,
            # and the model's weights when onnxruntime maps them). Both count in VmHWM.
            "idle_rss_anon_file_mib": [round(idle_anon / MiB, 1), round(idle_file / MiB, 1)],
            "after_rss_anon_file_mib": [round(anon / MiB, 1), round(file / MiB, 1)],
            "model_mib": round(len(data) / MiB, 1),
            "deployment_seconds": round(seconds, 3),
            "includes": "the runtime as 'python -m edge_runtime run' in its own process; "
            "VmHWM (peak resident set, heap and mapped files alike) from /proc before the "
            "deployment and after the model is active: transfer, verification, the on-device "
            "rewrite to mapped weights, onnxruntime load, health inference",
        },
    )

"""The sandbox really confines a worker: no network, limits on CPU, memory and time, a
crash kills only the worker, and (as root) the worker cannot read the service's files."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from modelkit import _selftest
from modelkit.files import NOBODY, private_workdir, write_stream
from modelkit.outcome import PLATFORM_FAULT, SandboxStatus
from modelkit.sandbox import run_task, start_worker
from schemas.config import SandboxLimits
from services.analyzer.domain import latency_warning
from tests.support.models import tiny_model, to_bytes

LIMITS = SandboxLimits(cpu_seconds=20, memory_mb=1024, wall_seconds=30)
SELF = "modelkit._selftest:"


@pytest.fixture
async def workdir() -> AsyncIterator[Path]:
    async with private_workdir() as path:
        yield path


async def test_worker_cannot_reach_a_listening_port(workdir: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        # The same call outside the sandbox gets through: the probe is able to fail.
        assert _selftest.connect("127.0.0.1", port)["connected"]
        outcome = await run_task(
            SELF + "connect", {"host": "127.0.0.1", "port": port}, limits=LIMITS, workdir=workdir
        )
    finally:
        server.close()
    assert outcome.ok, outcome.detail
    assert outcome.value["connected"] is False
    assert outcome.isolation in ("netns", "userns+netns")


async def test_memory_beyond_the_limit_fails_only_the_worker(workdir: Path) -> None:
    limits = SandboxLimits(cpu_seconds=20, memory_mb=512, wall_seconds=30)
    outcome = await run_task(SELF + "allocate", {"megabytes": 2048}, limits=limits, workdir=workdir)
    assert outcome.status is SandboxStatus.MEMORY_LIMIT
    assert "512 MiB" in outcome.describe(limits, "validator")
    small = await run_task(SELF + "allocate", {"megabytes": 16}, limits=limits, workdir=workdir)
    assert small.ok and small.value == 16 * 1024 * 1024


async def test_cpu_time_beyond_the_limit_kills_the_worker(workdir: Path) -> None:
    limits = SandboxLimits(cpu_seconds=1, memory_mb=1024, wall_seconds=60)
    outcome = await run_task(SELF + "spin", {}, limits=limits, workdir=workdir)
    assert outcome.status is SandboxStatus.CPU_LIMIT
    assert "CPU time" in outcome.describe(limits, "validator")


async def test_a_hanging_worker_is_killed_at_the_wall_clock_limit(workdir: Path) -> None:
    limits = SandboxLimits(cpu_seconds=20, memory_mb=1024, wall_seconds=1.5)
    outcome = await run_task(SELF + "sleep", {"seconds": 600}, limits=limits, workdir=workdir)
    assert outcome.status is SandboxStatus.TIMEOUT
    assert "did not finish within 1.5 s" in outcome.describe(limits, "validator")


async def test_a_crash_is_reported_with_its_signal(workdir: Path) -> None:
    outcome = await run_task(SELF + "abort", {}, limits=LIMITS, workdir=workdir)
    assert outcome.status is SandboxStatus.CRASHED
    assert "SIGABRT" in outcome.detail


async def test_worker_drops_root_and_cannot_read_private_files(
    workdir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "kek.key"
    secret.write_bytes(b"k" * 32)
    secret.chmod(0o600)
    who = await run_task(SELF + "identity", {}, limits=LIMITS, workdir=workdir)
    read = await run_task(SELF + "read_file", {"path": str(secret)}, limits=LIMITS, workdir=workdir)
    if os.geteuid() == 0:
        assert who.value == {"uid": 65534, "euid": 65534, "gid": 65534}
        assert read.status is SandboxStatus.ERROR and "PermissionError" in read.detail
    else:
        # Unprivileged services keep their own user; the network namespace still applies.
        assert who.value["uid"] != 0


async def test_only_sandbox_tasks_can_be_named(workdir: Path) -> None:
    with pytest.raises(ValueError, match="not a sandbox task"):
        await run_task("os:system", {"command": "true"}, limits=LIMITS, workdir=workdir)


async def test_a_worker_of_several_steps_answers_each_as_it_finishes(workdir: Path) -> None:
    plan = [["value", 1], ["value", {"b": 2}], ["raise", "broken"], ["value", 4]]
    async with start_worker(
        SELF + "steps", {"plan": plan}, steps=4, limits=LIMITS, workdir=workdir
    ) as worker:
        first, second, third = await worker.next(), await worker.next(), await worker.next()
    assert first.ok and first.value == 1 and first.isolation in ("netns", "userns+netns")
    assert second.ok and second.value == {"b": 2}
    assert third.status is SandboxStatus.ERROR and "RuntimeError: broken" in third.detail


async def test_a_crash_ends_the_step_that_was_running(workdir: Path) -> None:
    plan = [["value", "done"], ["abort", None], ["value", "never"]]
    async with start_worker(
        SELF + "steps", {"plan": plan}, steps=3, limits=LIMITS, workdir=workdir
    ) as worker:
        first, second = await worker.next(), await worker.next()
    assert first.ok and first.value == "done"
    assert second.status is SandboxStatus.CRASHED and "SIGABRT" in second.detail


async def test_every_step_has_the_wall_clock_limit(workdir: Path) -> None:
    limits = SandboxLimits(cpu_seconds=20, memory_mb=1024, wall_seconds=1.5)
    plan = [["sleep", 1.0], ["sleep", 1.0], ["sleep", 600]]
    async with start_worker(
        SELF + "steps", {"plan": plan}, steps=3, limits=limits, workdir=workdir
    ) as worker:
        outcomes = [await worker.next() for _ in plan]
    # Two steps of 1 s each pass although together they exceed 1.5 s; the third is killed.
    assert [o.status for o in outcomes] == [
        SandboxStatus.OK, SandboxStatus.OK, SandboxStatus.TIMEOUT
    ]  # fmt: skip
    assert "did not finish within 1.5 s" in outcomes[2].describe(limits, "validator")


async def test_every_step_has_the_cpu_limit(workdir: Path) -> None:
    limits = SandboxLimits(cpu_seconds=2, memory_mb=1024, wall_seconds=60)
    plan = [["burn", 1.5], ["burn", 1.5], ["spin", None]]
    async with start_worker(
        SELF + "steps", {"plan": plan}, steps=3, limits=limits, workdir=workdir
    ) as worker:
        outcomes = [await worker.next() for _ in plan]
    # 3 s of CPU in the first two steps, more than one step may use: each has its own 2 s.
    assert outcomes[0].ok and outcomes[1].ok, outcomes
    assert outcomes[2].status is SandboxStatus.CPU_LIMIT


async def test_a_worker_started_early_reads_nothing_before_it_begins(workdir: Path) -> None:
    target = workdir / "later.bin"
    async with start_worker(SELF + "read_file", steps=1, limits=LIMITS, workdir=workdir) as worker:
        # The worker is up (confined, task imported) before the file it will read exists.
        await asyncio.sleep(0.5)
        target.write_bytes(b"x" * 10)
        target.chmod(0o644)
        await worker.begin({"path": str(target)})
        outcome = await worker.next()
    assert outcome.ok and outcome.value == 10, outcome


async def test_a_later_step_runs_only_when_asked_for(workdir: Path) -> None:
    target = workdir / "between.bin"
    plan = [["value", 1], ["read", str(target)]]
    async with start_worker(
        SELF + "steps", {"plan": plan}, steps=2, limits=LIMITS, workdir=workdir
    ) as worker:
        first = await worker.next()
        await asyncio.sleep(0.3)
        # Written after the first step: the second, which reads it, has not run yet.
        target.write_bytes(b"y" * 7)
        target.chmod(0o644)
        second = await worker.next()
    assert first.value == 1
    assert second.ok and second.value == 7, second


async def test_the_runtime_checks_run_in_the_sandbox(workdir: Path) -> None:
    # Everything they need is imported before the worker drops to nobody (the interpreter
    # may live where nobody cannot read): generated inputs, and reference .npz files.
    model = workdir / "model.onnx"
    model.write_bytes(to_bytes(tiny_model()))
    x = np.array([[1.0, 1.0, -2.0, 3.0]], dtype=np.float32)
    bias = np.array([0.5, -0.5, 1.0, 0.0], dtype=np.float32)
    reference = workdir / "reference.npz"
    np.savez_compressed(reference, **{"inputs/x": x, "outputs/y": np.maximum(x + bias, 0)})
    for path in (model, reference):
        path.chmod(0o644)
    checks = ["session", "trial_inference", "reference"]
    kwargs = {
        "model": str(model),
        "checks": checks,
        "reference": str(reference),
        "dynamic_dim_default": 1,
        "dynamic_dims": {},
        "reference_atol": 1e-4,
        "reference_rtol": 1e-4,
    }
    async with start_worker(
        "services.validator.runtime:run_runtime_checks",
        kwargs,
        steps=3,
        limits=LIMITS,
        workdir=workdir,
    ) as worker:
        outcomes = [await worker.next() for _ in checks]
    assert all(o.ok and o.value["passed"] for o in outcomes), outcomes


async def test_a_worker_cannot_plant_a_link_where_the_service_writes(
    workdir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    # A work directory waits for its upload while its workers are started ahead: as root,
    # workers (nobody) cannot add entries to it.
    planted = await run_task(
        SELF + "plant_link",
        {"target": str(victim), "link": str(workdir / "upload")},
        limits=LIMITS,
        workdir=workdir,
    )
    if os.geteuid() == 0:
        assert planted.status is SandboxStatus.ERROR and "PermissionError" in planted.detail
    else:
        assert planted.ok  # the worker is the service's own user: nothing to protect
    # Whatever is there, the service never writes through it.
    (workdir / "reference.npz").symlink_to(victim)

    async def stream() -> AsyncIterator[bytes]:
        yield b"model bytes"

    with pytest.raises(FileExistsError):
        await write_stream(stream(), workdir / "reference.npz", limit=1 << 20)
    assert victim.read_bytes() == b"keep"


async def test_a_failure_of_the_sandbox_is_never_the_models(workdir: Path) -> None:
    # Before it said ready the worker had read nothing it was given: the platform's fault.
    missing = await run_task(SELF + "no_such_task", {}, limits=LIMITS, workdir=workdir)
    assert missing.platform_fault
    assert missing.describe(LIMITS, "analyzer").startswith(PLATFORM_FAULT + ": ")
    # A module that cannot be imported once the worker runs its task: the installation's.
    lazy = await run_task(
        SELF + "lazy_import", {"module": "no_such_module"}, limits=LIMITS, workdir=workdir
    )
    assert lazy.platform_fault and "ModuleNotFoundError" in lazy.detail
    assert latency_warning(lazy.describe(LIMITS, "analyzer"), platform_fault=True).startswith(
        f"latency not measured: {PLATFORM_FAULT}: "
    )
    # What a task raises on its input stays the task's (the model's) failure.
    raised = await run_task(
        SELF + "read_file", {"path": str(workdir / "absent")}, limits=LIMITS, workdir=workdir
    )
    assert raised.status is SandboxStatus.ERROR and not raised.platform_fault
    assert not raised.describe(LIMITS, "analyzer").startswith(PLATFORM_FAULT)


async def test_a_module_imported_after_the_drop_is_found(workdir: Path) -> None:
    # np.percentile imports numpy.ma only when first called, after the privilege drop:
    # wherever the project is installed, the worker must still reach it.
    outcome = await run_task(
        SELF + "lazy_import", {"module": "numpy.ma"}, limits=LIMITS, workdir=workdir
    )
    assert outcome.ok, outcome.detail
    assert outcome.value["uid"] == (NOBODY if os.geteuid() == 0 else os.geteuid())

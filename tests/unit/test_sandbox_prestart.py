"""Workers started ahead of a job (``StartedAhead``): a job gets the set that waited for
it, confined and imported; each set serves one job; a set that died while it waited is
replaced; stopping the service kills the set that waits."""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelkit import ahead
from modelkit.ahead import StartedAhead
from modelkit.files import private_workdir
from modelkit.outcome import SandboxStatus
from modelkit.sandbox import Worker, start_worker
from schemas.config import SandboxLimits

LIMITS = SandboxLimits(cpu_seconds=20, memory_mb=1024, wall_seconds=30)


@dataclass
class OneWorker:
    workdir: Path
    worker: Worker

    @property
    def alive(self) -> bool:
        return self.worker.alive

    async def started(self) -> bool:
        return await self.worker.started()


class Sets:
    """A ``StartedAhead`` of one ``pid`` worker each, counting the sets it started."""

    def __init__(self, task: str = "modelkit._selftest:pid") -> None:
        self.task = task
        self.made: list[OneWorker] = []
        self.pool = StartedAhead(self.prepare)

    async def prepare(self, stack: AsyncExitStack) -> OneWorker:
        workdir = await stack.enter_async_context(private_workdir())
        worker = await stack.enter_async_context(
            start_worker(self.task, steps=1, limits=LIMITS, workdir=workdir)
        )
        self.made.append(OneWorker(workdir, worker))
        return self.made[-1]


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def run(one: OneWorker) -> int:
    """Run the set's worker; the process id it ran in."""
    await one.worker.begin({})
    outcome = await one.worker.next()
    assert outcome.ok, outcome
    return int(outcome.value)


async def test_a_job_gets_the_set_that_waited_and_every_job_its_own() -> None:
    sets = Sets()
    sets.pool.start()
    assert await sets.pool.ready()  # confined and imported before there is a job
    waiting = sets.made[0]
    async with sets.pool.take() as first:
        assert first is waiting and len(sets.made) == 1
        one = await run(first)
    # The job's worker and work directory are gone with the job.
    assert not running(one) and not first.workdir.exists()
    assert await sets.pool.ready()
    async with sets.pool.take() as second:
        two = await run(second)
    assert len(sets.made) == 2 and two != one
    await sets.pool.aclose()


async def test_the_next_set_starts_once_the_service_has_been_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ahead, "IDLE_BEFORE_START", 0.3)
    sets = Sets()
    sets.pool.start()
    assert await sets.pool.ready()
    async with sets.pool.take() as first:
        await run(first)
    await asyncio.sleep(0.15)
    # Not beside whatever follows the job at once: due, not started.
    assert len(sets.made) == 1 and sets.pool._next is None and sets.pool._due is not None
    for _ in range(100):
        if len(sets.made) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(sets.made) == 2
    assert await sets.pool.ready()
    await sets.pool.aclose()


async def test_a_pool_nobody_started_keeps_nothing_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ahead, "IDLE_BEFORE_START", 0.1)
    sets = Sets()
    async with sets.pool.take() as only:  # none ready: the job starts its own
        await run(only)
    await asyncio.sleep(0.5)
    # Nobody would close a set started now: none is.
    assert len(sets.made) == 1 and sets.pool._next is None
    assert not await sets.pool.ready()


async def test_a_job_cancelled_while_it_waits_for_its_set_leaves_nothing_running() -> None:
    sets = Sets()
    sets.pool.start()  # not waited for: the job waits for it

    async def job() -> None:
        async with sets.pool.take() as one:
            await run(one)

    task = asyncio.create_task(job())
    await asyncio.sleep(0)  # the job is claiming the set still on its way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sets.pool.aclose()  # waits for the dropped set to be closed
    assert len(sets.made) == 1
    assert not running(sets.made[0].worker.pid) and not sets.made[0].workdir.exists()


async def test_stopping_during_a_job_lets_it_finish_and_starts_nothing_after() -> None:
    sets = Sets()
    sets.pool.start()
    assert await sets.pool.ready()
    async with sets.pool.take() as one:
        await sets.pool.aclose()
        assert await run(one) == one.worker.pid  # the running job is not disturbed
    await asyncio.sleep(0.1)
    assert len(sets.made) == 1 and sets.pool._next is None and sets.pool._due is None


async def test_a_set_that_died_while_it_waited_is_replaced() -> None:
    sets = Sets()
    sets.pool.start()
    assert await sets.pool.ready()
    dead = sets.made[0]
    os.kill(dead.worker.pid, 9)
    for _ in range(100):
        if not dead.alive:
            break
        await asyncio.sleep(0.05)
    async with sets.pool.take() as fresh:
        assert fresh is not dead and len(sets.made) == 2
        assert await run(fresh) != dead.worker.pid
    await sets.pool.aclose()


async def test_stopping_kills_the_waiting_set_and_removes_its_directory() -> None:
    sets = Sets()
    sets.pool.start()
    assert await sets.pool.ready()
    waiting = sets.made[0]
    assert running(waiting.worker.pid) and waiting.workdir.exists()
    await sets.pool.aclose()
    assert not running(waiting.worker.pid) and not waiting.workdir.exists()
    # A job after that still runs, in workers of its own, and none are started after it.
    async with sets.pool.take() as late:
        await run(late)
    assert len(sets.made) == 2 and sets.pool._next is None and sets.pool._due is None


async def test_a_worker_that_cannot_start_says_so_instead_of_ready() -> None:
    sets = Sets(task="modelkit._selftest:no_such_task")
    sets.pool.start()
    assert not await sets.pool.ready()
    async with sets.pool.take() as broken:
        await broken.worker.begin({})
        outcome = await broken.worker.next()
    assert outcome.status is SandboxStatus.ERROR and "no_such_task" in outcome.detail
    await sets.pool.aclose()


@pytest.mark.parametrize("service_kind", ["validator", "analyzer"])
async def test_a_model_whose_artifact_is_missing_starts_no_worker(
    tmp_path: Path, service_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from schemas.config import Settings
    from schemas.events import ModelUploaded
    from services.analyzer import errors as analyzer_errors
    from services.analyzer.service import Analyzer
    from services.common.artifacts import ArtifactStore
    from services.validator import errors as validator_errors
    from services.validator.service import Validator

    settings = Settings()
    store = ArtifactStore(root=tmp_path / "store", kek=os.urandom(32), chunk_size=1 << 16)
    missing = "ab" * 32  # never stored: the real store raises, as for an upload not yet visible
    started: list[object] = []
    kind = Validator if service_kind == "validator" else Analyzer
    service = kind(settings, bus=None, sessions=None, artifacts=store)  # type: ignore[arg-type]
    prepare = service.workers._prepare

    async def counted(stack: AsyncExitStack) -> object:
        started.append(stack)
        return await prepare(stack)

    monkeypatch.setattr(service.workers, "_prepare", counted)
    errors = validator_errors if service_kind == "validator" else analyzer_errors
    with pytest.raises(errors.ArtifactUnavailableError):
        if isinstance(service, Validator):
            event = ModelUploaded(
                event_id=uuid.uuid4(), model="m", version="1.0.0", artifact_id=missing,
                size_bytes=10, sequence=1,
            )  # fmt: skip
            await service.validate(event)
        else:
            await service.analyze(missing)
    assert started == []

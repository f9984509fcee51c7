"""Run one task on untrusted bytes in a separate, limited, network-less process.

The parent (a service) calls ``run_task``; the child is ``python -I -m
modelkit._worker``, which, before it touches anything it was given, sets its
own limits (RLIMIT_CPU, RLIMIT_AS, no core dumps, no more file descriptors than needed),
moves into a new network namespace where only a down loopback exists, and, when started
as root, drops to ``nobody``. Only then does it import the task and run it. The parent
enforces the wall clock by killing the child's process group. A model that crashes,
exhausts memory or hangs kills only its worker; the parent reports what happened.

See ``docs/validation.md`` ("The sandbox") for why it is built this way.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from modelkit._process import StderrTail, header, kill, spawn
from modelkit.files import private_workdir
from modelkit.outcome import SandboxStatus, TaskOutcome, is_ready, outcome_of
from schemas.config import SandboxLimits

__all__ = [
    "Worker",
    "Workers",
    "run_task",
    "start_worker",
    "start_workers",
]


async def run_task(
    task: str,
    kwargs: dict[str, Any],
    *,
    limits: SandboxLimits,
    workdir: Path,
    require_isolation: bool = True,
) -> TaskOutcome:
    """Run ``task`` (``"module:function"``) with ``kwargs`` in a sandboxed worker."""
    spec = header(task, limits, require_isolation, 1) + json.dumps(kwargs).encode() + b"\n"
    started = time.perf_counter()
    proc = await spawn(workdir)
    assert proc.stdin is not None and proc.stdout is not None
    stderr = StderrTail(proc)

    ready = False

    async def talk() -> bytes:
        nonlocal ready
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(spec)
        with suppress(BrokenPipeError, ConnectionResetError):
            await proc.stdin.drain()
        proc.stdin.close()
        first = await proc.stdout.readline()
        ready = is_ready(first)
        out = first + await proc.stdout.read()
        await proc.wait()
        return out

    timed_out = False
    out = b""
    try:
        out = await asyncio.wait_for(talk(), timeout=limits.wall_seconds)
    except TimeoutError:
        timed_out = True
    finally:
        await kill(proc)
        await stderr.close()
    duration = (time.perf_counter() - started) * 1000
    if timed_out:
        return TaskOutcome(
            SandboxStatus.TIMEOUT,
            detail="" if ready else "the worker did not start in time",
            duration_ms=duration,
            stderr_tail=stderr.text(),
            platform=not ready,
        )
    return outcome_of(proc.returncode or 0, out, duration, stderr.text(), started=ready)


class Worker:
    """A running worker of a task that reports several steps, one answer line each.

    The worker confines itself and imports the task as soon as it starts; it reads a file
    only once ``begin`` has sent the task's arguments, and runs each later step when
    ``next`` asks for it. Every step has the limits of a whole task:
    ``limits.wall_seconds`` from the moment it is asked for (the parent kills the process
    group beyond it) and ``limits.cpu_seconds`` of CPU time (the worker moves its soft
    RLIMIT_CPU before each step, under a hard limit of all the steps together). A worker
    that dies ends the step it was running.
    """

    def __init__(self, proc: asyncio.subprocess.Process, limits: SandboxLimits, steps: int) -> None:
        self._proc = proc
        self._limits = limits
        self._steps = steps
        self._asked = 0
        self._answered = 0
        self._stderr = StderrTail(proc)
        self._mark = time.perf_counter()
        self._ended = False
        #: Reads the worker's first line: ``ready``, or why it could not start.
        self._first: asyncio.Future[bytes] | None = None
        self._past_first = False
        #: Whether the worker said ``ready``: until then it has read nothing it was given,
        #: so whatever goes wrong is the platform's fault.
        self._ready = False

    def _first_line(self) -> asyncio.Future[bytes]:
        if self._first is None:
            assert self._proc.stdout is not None
            self._first = asyncio.ensure_future(self._proc.stdout.readline())
        return self._first

    async def started(self) -> bool:
        """Wait until the worker has confined itself and imported its task; False when
        it said something else first (it could not) or ended."""
        with suppress(ValueError):
            return is_ready(await asyncio.shield(self._first_line()))
        return False

    async def _read_answer(self) -> bytes:
        assert self._proc.stdout is not None
        if not self._past_first:
            first = await asyncio.shield(self._first_line())
            self._past_first = True
            if not is_ready(first):
                return first  # an answer instead: it could not confine itself or start
            self._ready = True
        return await self._proc.stdout.readline()

    async def _send(self, line: bytes) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line)
        with suppress(BrokenPipeError, ConnectionResetError):
            await self._proc.stdin.drain()
        self._asked += 1
        self._mark = time.perf_counter()

    async def begin(self, kwargs: dict[str, Any]) -> None:
        """Give the task its arguments: the first step starts."""
        if self._asked:
            raise RuntimeError("the worker has already begun")
        await self._send(json.dumps(kwargs).encode() + b"\n")

    async def next(self) -> TaskOutcome:
        """Run the next step; its answer, or why the worker gave none (then it is over)."""
        if self._ended or self._answered >= self._steps or not self._asked:
            raise RuntimeError("the worker has no step to run")
        assert self._proc.stdout is not None
        if self._asked == self._answered:
            await self._send(b"\n")
        self._answered += 1
        # The step's wall clock runs from when it was asked for, which may be a while ago.
        left = self._limits.wall_seconds - (time.perf_counter() - self._mark)
        try:
            line = await asyncio.wait_for(self._read_answer(), timeout=max(left, 0.05))
        except TimeoutError:
            lap = self._lap()
            await self.close()
            return TaskOutcome(
                SandboxStatus.TIMEOUT,
                detail="" if self._ready else "the worker did not start in time",
                duration_ms=lap,
                stderr_tail=self._stderr.text(),
                platform=not self._ready,
            )
        except ValueError:  # an answer longer than MAX_ANSWER
            lap = self._lap()
            await self.close()
            return TaskOutcome(
                SandboxStatus.CRASHED,
                detail="the worker's answer is too long",
                duration_ms=lap,
                stderr_tail=self._stderr.text(),
            )
        if not line.endswith(b"\n"):
            # End of output: the worker is gone or going; its exit status says why.
            lap = self._lap()
            exited = await self._finish(grace=self._limits.wall_seconds)
            if not exited:
                return TaskOutcome(
                    SandboxStatus.TIMEOUT,
                    duration_ms=lap,
                    stderr_tail=self._stderr.text(),
                    platform=not self._ready,
                )
            code = self._proc.returncode or 0
            return outcome_of(code, line, lap, self._stderr.text(), started=self._ready)
        outcome = outcome_of(0, line, self._lap(), "", started=self._ready)
        if not outcome.ok:
            await self.close()
        return outcome

    def _lap(self) -> float:
        return (time.perf_counter() - self._mark) * 1000

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """Still running and not closed (a worker started ahead may have died idle)."""
        return not self._ended and self._proc.returncode is None

    async def close(self) -> None:
        """Stop the worker if it still runs (nothing it could still say is wanted)."""
        await self._finish(grace=0.0)

    async def _finish(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for the worker to exit, then kill its group.

        True when it exited by itself."""
        if self._ended:
            return True
        self._ended = True
        exited = False
        try:
            if grace > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._proc.wait(), timeout=grace)
            exited = self._proc.returncode is not None
        finally:
            await kill(self._proc)
            await self._stderr.close()
        return exited


@asynccontextmanager
async def start_worker(
    task: str,
    kwargs: dict[str, Any] | None = None,
    *,
    steps: int,
    limits: SandboxLimits,
    workdir: Path,
    require_isolation: bool = True,
) -> AsyncIterator[Worker]:
    """Start a sandboxed worker for ``task``, a generator of at most ``steps`` answers.

    The worker is confined exactly as in ``run_task``; it is killed on exit. Without
    ``kwargs`` it waits, confined and with the task imported, for ``Worker.begin``.
    """
    first = header(task, limits, require_isolation, steps)
    proc = await spawn(workdir)
    worker = Worker(proc, limits, steps)
    try:
        assert proc.stdin is not None
        proc.stdin.write(first)
        with suppress(BrokenPipeError, ConnectionResetError):
            await proc.stdin.drain()
        if kwargs is not None:
            await worker.begin(kwargs)
        yield worker
    finally:
        await worker.close()


@dataclass(frozen=True)
class Workers:
    """Sandboxed workers for one job, in their private work directory (``start_workers``)."""

    workdir: Path
    each: tuple[Worker, ...]

    @property
    def alive(self) -> bool:
        return all(w.alive for w in self.each)

    async def started(self) -> bool:
        return all(await asyncio.gather(*(w.started() for w in self.each)))


W = TypeVar("W", bound=Workers)


async def start_workers(
    stack: AsyncExitStack,
    tasks: Sequence[tuple[str, int]],
    *,
    kind: type[W],
    work_dir: str,
    limits: SandboxLimits,
    require_isolation: bool,
) -> W:
    """One worker per ``(task, steps)`` of ``tasks``, in a fresh private work directory,
    waiting (confined, task imported) for ``Worker.begin``. When ``stack`` closes, the
    workers are killed together, then the directory is removed: a killed worker's memory
    (a model, a session) takes the kernel a while to free."""
    workdir = await stack.enter_async_context(private_workdir(work_dir))
    each: list[Worker] = []
    for task, steps in tasks:
        worker = start_worker(
            task, steps=steps, limits=limits, workdir=workdir, require_isolation=require_isolation
        )
        each.append(await stack.enter_async_context(worker))

    async def close_all() -> None:
        await asyncio.gather(*(w.close() for w in each))

    stack.push_async_callback(close_all)
    return kind(workdir, tuple(each))

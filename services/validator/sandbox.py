"""Run one task on untrusted bytes in a separate, limited, network-less process.

The parent (a service) calls ``run_task``; the child is ``python -I -m
services.validator._worker``, which, before it touches anything it was given, sets its
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
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from schemas.config import SandboxLimits
from services.common.logging import get_logger

__all__ = [
    "NOBODY",
    "PLATFORM_FAULT",
    "SandboxStatus",
    "StartedAhead",
    "TaskOutcome",
    "Worker",
    "Workers",
    "private_workdir",
    "run_task",
    "start_worker",
    "start_workers",
]

log = get_logger(__name__)

#: uid/gid the worker drops to when the service runs as root.
NOBODY = 65534
#: How a report begins the reason of a failure of the sandbox itself.
PLATFORM_FAULT = "the sandbox failed (platform fault, not the model's)"
_STDERR_TAIL = 4096
_ALLOWED_TASK_PREFIXES = ("services.validator.", "services.analyzer.")
#: Longest answer line a worker may write (an analysis report of a large model).
_MAX_ANSWER = 64 * 1024 * 1024


class SandboxStatus(StrEnum):
    OK = "ok"
    #: The task raised; ``detail`` holds the exception.
    ERROR = "error"
    TIMEOUT = "timeout"
    CPU_LIMIT = "cpu_limit"
    MEMORY_LIMIT = "memory_limit"
    CRASHED = "crashed"
    #: The worker could not isolate itself as required.
    ISOLATION = "isolation"


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What came back from one worker."""

    status: SandboxStatus
    value: Any = None
    detail: str = ""
    #: How the worker was cut off from the network: ``netns``, ``userns+netns`` or ``none``.
    isolation: str = ""
    duration_ms: float = 0.0
    stderr_tail: str = ""
    #: The worker failed before it read anything of the task's files, or could not import
    #: a module: the platform's fault (installation, host), never the model's.
    platform: bool = False

    @property
    def ok(self) -> bool:
        return self.status is SandboxStatus.OK

    @property
    def platform_fault(self) -> bool:
        """Whether the sandbox itself failed (not the task on its input)."""
        return not self.ok and (self.platform or self.status is SandboxStatus.ISOLATION)

    def describe(self, limits: SandboxLimits, section: str) -> str:
        """A sentence for a report: why the worker gave no answer. A platform fault says
        so first (``the sandbox failed (platform fault, not the model's): ...``)."""
        if self.platform_fault:
            return f"{PLATFORM_FAULT}: {self._reason(limits, section)}"
        return self._reason(limits, section)

    def _reason(self, limits: SandboxLimits, section: str) -> str:
        if self.status is SandboxStatus.TIMEOUT and self.detail:
            return self.detail
        if self.status is SandboxStatus.TIMEOUT:
            return (
                f"did not finish within {limits.wall_seconds:g} s and was killed "
                f"({section}.sandbox.wall_seconds)"
            )
        if self.status is SandboxStatus.CPU_LIMIT:
            return (
                f"used more than {limits.cpu_seconds} s of CPU time and was killed "
                f"({section}.sandbox.cpu_seconds)"
            )
        if self.status is SandboxStatus.MEMORY_LIMIT:
            return (
                f"ran out of memory (limit {limits.memory_mb} MiB, "
                f"{section}.sandbox.memory_mb): {self.detail}"
            )
        if self.status is SandboxStatus.CRASHED:
            return f"crashed the worker process: {self.detail}"
        return self.detail


@asynccontextmanager
async def private_workdir(parent: str = "") -> AsyncIterator[Path]:
    """A fresh directory for one artifact's files, removed afterwards.

    Mode 0700; when the service runs as root it stays root's with mode 0711: the workers
    (``nobody``) reach the files handed to them (``hand_over``) but cannot add, replace or
    list entries, so nothing a worker left running could plant a symbolic link where the
    service writes next (a directory waits for its upload while its workers are started
    ahead).
    """
    path = Path(tempfile.mkdtemp(prefix="eaf-sandbox-", dir=parent or None))
    try:
        if os.geteuid() == 0:
            os.chmod(path, 0o711)  # noqa: S103 - others may traverse, not list or write
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)


def hand_over(path: Path) -> None:
    """Give a file or directory the parent made in a work dir to the worker's user (the
    entry itself, never what a symbolic link would point to)."""
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


def _header(task: str, limits: SandboxLimits, require_isolation: bool, steps: int) -> bytes:
    """The worker's first line: what to run and within which limits (no arguments)."""
    if not task.startswith(_ALLOWED_TASK_PREFIXES):
        raise ValueError(f"task {task!r} is not a sandbox task")
    spec = {
        "task": task,
        "cpu_seconds": limits.cpu_seconds,
        "memory_mb": limits.memory_mb,
        "require_isolation": require_isolation,
        "steps": steps,
    }
    return json.dumps(spec).encode() + b"\n"


async def _spawn(workdir: Path) -> asyncio.subprocess.Process:
    env = {
        "PATH": os.defpath,
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        # Few malloc arenas and one BLAS/OpenMP thread keep the address space (RLIMIT_AS)
        # for the model rather than for per-thread reservations.
        "MALLOC_ARENA_MAX": "2",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-m",
        "services.validator._worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=workdir,
        env=env,
        start_new_session=True,
        limit=_MAX_ANSWER,
    )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        # The whole group: the worker may have started threads or children.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


class _StderrTail:
    """Keeps the last bytes the worker wrote to stderr (native libraries' chatter)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._tail = bytearray()
        self._task = asyncio.create_task(self._drain(proc))

    async def _drain(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(65536):
            self._tail.extend(chunk)
            del self._tail[:-_STDERR_TAIL]

    async def close(self) -> None:
        with suppress(Exception):
            await asyncio.wait_for(self._task, timeout=5)
        self._task.cancel()

    def text(self) -> str:
        return self._tail.decode(errors="replace")


async def run_task(
    task: str,
    kwargs: dict[str, Any],
    *,
    limits: SandboxLimits,
    workdir: Path,
    require_isolation: bool = True,
) -> TaskOutcome:
    """Run ``task`` (``"module:function"``) with ``kwargs`` in a sandboxed worker."""
    spec = _header(task, limits, require_isolation, 1) + json.dumps(kwargs).encode() + b"\n"
    started = time.perf_counter()
    proc = await _spawn(workdir)
    assert proc.stdin is not None and proc.stdout is not None
    stderr = _StderrTail(proc)

    ready = False

    async def talk() -> bytes:
        nonlocal ready
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(spec)
        with suppress(BrokenPipeError, ConnectionResetError):
            await proc.stdin.drain()
        proc.stdin.close()
        first = await proc.stdout.readline()
        ready = _is_ready(first)
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
        await _kill(proc)
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
    return _outcome(proc.returncode or 0, out, duration, stderr.text(), started=ready)


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
        self._stderr = _StderrTail(proc)
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
            return _is_ready(await asyncio.shield(self._first_line()))
        return False

    async def _read_answer(self) -> bytes:
        assert self._proc.stdout is not None
        if not self._past_first:
            first = await asyncio.shield(self._first_line())
            self._past_first = True
            if not _is_ready(first):
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
        except ValueError:  # an answer longer than _MAX_ANSWER
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
            return _outcome(code, line, lap, self._stderr.text(), started=self._ready)
        outcome = _outcome(0, line, self._lap(), "", started=self._ready)
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
            await _kill(self._proc)
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
    header = _header(task, limits, require_isolation, steps)
    proc = await _spawn(workdir)
    worker = Worker(proc, limits, steps)
    try:
        assert proc.stdin is not None
        proc.stdin.write(header)
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


#: Seconds a service stays idle after a job before it starts the next job's workers.
IDLE_BEFORE_START = 1.0


class Prepared(Protocol):
    """What ``StartedAhead`` keeps ready: workers (and their work directory)."""

    @property
    def alive(self) -> bool: ...

    async def started(self) -> bool: ...


P = TypeVar("P", bound=Prepared)


class StartedAhead(Generic[P]):
    """One set of sandboxed workers started before the job that will use it.

    A worker spends most of a small job starting Python and importing onnx or
    onnxruntime (0.2-0.3 s). ``start`` prepares one set (``prepare`` enters its work
    directory and workers into the stack it is given); ``take`` hands it to a job, or
    prepares one on the spot when none is ready, and closes it after the job: **each set
    serves exactly one job**, so a model never shares a process with another, and every
    worker is confined exactly as one started for the job (it waits, confined and
    imported, for its first step). The next set starts ``IDLE_BEFORE_START`` seconds
    after a job, unless a job wants one sooner (it then starts its own): starting a set
    takes 0.3-0.6 s of CPU, which should not run beside the next stage of the same upload
    (the analyzer's latency measurement follows validation at once). A set whose worker
    died while it waited is replaced, not used.
    """

    def __init__(
        self, prepare: Callable[[AsyncExitStack], Awaitable[P]], *, enabled: bool = True
    ) -> None:
        self._prepare = prepare
        self._enabled = enabled
        self._next: asyncio.Task[tuple[AsyncExitStack, P]] | None = None
        #: The next set's start, due once the service has been idle for a while.
        self._due: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        #: Started by its owner, who closes it (``aclose``); until then, nothing ahead.
        self._running = False
        self._closed = False

    def start(self) -> None:
        """Start preparing the next set (nothing if one is on its way or disabled); from
        now on a set is kept ready until ``aclose``."""
        self._cancel_due()
        if not self._enabled or self._closed:
            return
        self._running = True
        if self._next is None:
            self._next = asyncio.create_task(self._make())

    def _cancel_due(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None

    async def ready(self, timeout: float = 60.0) -> bool:
        """Start the next set now if it is only due later, and wait until it has confined
        itself and imported its code; False when not started, disabled, or the set could
        not start within ``timeout`` seconds."""
        if not self._running:
            return False
        self.start()
        task = self._next
        if task is None:
            return False

        async def started() -> bool:
            await asyncio.wait([task])
            if task.cancelled() or task.exception() is not None:
                return False
            _, prepared = task.result()
            return await prepared.started()

        try:
            return await asyncio.wait_for(started(), timeout)
        except TimeoutError:
            return False

    async def _make(self) -> tuple[AsyncExitStack, P]:
        stack = AsyncExitStack()
        try:
            return stack, await self._prepare(stack)
        except BaseException:
            await stack.aclose()
            raise

    async def _claim(self) -> tuple[AsyncExitStack, P] | None:
        self._cancel_due()  # a set not started yet is of no use to this job
        task, self._next = self._next, None
        if task is None:
            return None
        try:
            stack, prepared = await asyncio.shield(task)
        except asyncio.CancelledError:
            self._drop(task)  # the job was cancelled: close its set once it is ready
            raise
        except Exception as exc:  # the job starts its own set instead
            log.warning("workers started ahead failed to start", error=str(exc))
            return None
        if prepared.alive:
            return stack, prepared
        log.warning("a worker started ahead exited while it waited; starting another")
        await stack.aclose()
        return None

    def _drop(self, task: asyncio.Task[tuple[AsyncExitStack, P]]) -> None:
        async def close() -> None:
            with suppress(BaseException):
                stack, _ = await task
                await stack.aclose()

        closing = asyncio.create_task(close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    @asynccontextmanager
    async def take(self) -> AsyncIterator[P]:
        """The set for one job, closed (its workers killed) when the job ends."""
        try:
            made = await self._claim()
            stack, prepared = made if made is not None else await self._make()
            try:
                yield prepared
            finally:
                await stack.aclose()
        finally:
            # However the job ended: the next set is due once the service is idle.
            self._cancel_due()
            if self._running and not self._closed and self._next is None:
                self._due = asyncio.get_running_loop().call_later(IDLE_BEFORE_START, self.start)

    async def __aenter__(self) -> StartedAhead[P]:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the set waiting for a job; ``take`` still works, without sets ahead."""
        self._closed = True
        self._cancel_due()
        task, self._next = self._next, None
        if task is not None:
            task.cancel()
            self._drop(task)
        if self._closing:
            await asyncio.wait(set(self._closing))


def _is_ready(line: bytes) -> bool:
    """Whether ``line`` is the worker's ``ready`` line (not an answer)."""
    if not line.startswith(b'{"status": "ready"'):
        return False
    with suppress(ValueError):
        return bool(json.loads(line).get("status") == "ready")
    return False


def _outcome(
    code: int, out: bytes, duration: float, stderr_tail: str, *, started: bool
) -> TaskOutcome:
    """What the worker's exit ``code`` and output say; ``started``: it had said ``ready``
    (before that, nothing it was given had been read: any failure is the platform's)."""
    outcome = _parse_outcome(code, out, duration, stderr_tail)
    if not started and not outcome.ok and not outcome.platform:
        return replace(outcome, platform=True)
    return outcome


def _parse_outcome(code: int, out: bytes, duration: float, stderr_tail: str) -> TaskOutcome:
    reply: dict[str, Any] | None = None
    lines = [line for line in out.strip().splitlines() if not _is_ready(line)]
    if lines:
        with suppress(ValueError):
            reply = json.loads(lines[-1].decode(errors="replace"))
    if code < 0:
        sig = -code
        if sig == signal.SIGXCPU:
            return TaskOutcome(SandboxStatus.CPU_LIMIT, duration_ms=duration)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        detail = f"killed by signal {name}"
        if sig == signal.SIGKILL:
            # We kill only on timeout (handled above): this is the CPU hard limit or the
            # kernel's out-of-memory killer.
            detail += " (CPU time hard limit or the kernel's out-of-memory killer)"
        if sig == signal.SIGABRT and "bad_alloc" in stderr_tail:
            return TaskOutcome(SandboxStatus.MEMORY_LIMIT, detail="std::bad_alloc")
        last = _last_line(stderr_tail)
        return TaskOutcome(
            SandboxStatus.CRASHED,
            detail=f"{detail}{': ' + last if last else ''}",
            duration_ms=duration,
            stderr_tail=stderr_tail,
        )
    if not isinstance(reply, dict):
        last = _last_line(stderr_tail)
        return TaskOutcome(
            SandboxStatus.CRASHED,
            detail=f"the worker exited with status {code} without an answer"
            + (f": {last}" if last else ""),
            duration_ms=duration,
            stderr_tail=stderr_tail,
        )
    isolation = str(reply.get("isolation", ""))
    status = SandboxStatus(reply.get("status", "error"))
    return TaskOutcome(
        status,
        value=reply.get("value"),
        detail=str(reply.get("detail", "")),
        isolation=isolation,
        duration_ms=duration,
        stderr_tail=stderr_tail,
        platform=bool(reply.get("platform", False)),
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""

"""Starting, stopping and listening to one worker process (``python -I -m
modelkit._worker``): what ``sandbox`` builds on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from contextlib import suppress
from pathlib import Path

from schemas.config import SandboxLimits

__all__ = ["MAX_ANSWER", "StderrTail", "header", "kill", "spawn"]

#: Modules a worker may run a task of: modelkit's own and the services' task modules
#: (a task name comes from code, never from an upload; this keeps it that way).
_TASK_PREFIXES = ("modelkit.", "services.")
_STDERR_TAIL = 4096
#: Longest answer line a worker may write (an analysis report of a large model).
MAX_ANSWER = 64 * 1024 * 1024


def header(task: str, limits: SandboxLimits, require_isolation: bool, steps: int) -> bytes:
    """The worker's first line: what to run and within which limits (no arguments)."""
    if not task.startswith(_TASK_PREFIXES):
        raise ValueError(f"task {task!r} is not a sandbox task")
    spec = {
        "task": task,
        "cpu_seconds": limits.cpu_seconds,
        "memory_mb": limits.memory_mb,
        "require_isolation": require_isolation,
        "steps": steps,
    }
    return json.dumps(spec).encode() + b"\n"


async def spawn(workdir: Path) -> asyncio.subprocess.Process:
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
        "modelkit._worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=workdir,
        env=env,
        start_new_session=True,
        limit=MAX_ANSWER,
    )


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        # The whole group: the worker may have started threads or children.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


class StderrTail:
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

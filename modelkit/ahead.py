"""Sandboxed workers started before the job that will use them (``StartedAhead``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Generic, Protocol, TypeVar

import structlog

__all__ = ["IDLE_BEFORE_START", "Prepared", "StartedAhead"]

log = structlog.get_logger(__name__)

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

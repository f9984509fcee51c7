"""Validation and line protocol of runs of messages, in worker processes.

Checking a message (``domain.validate_message``: the schema, then ``Point`` for each of its
points) is pure CPU work, about 15 µs a point; in the ingester's own process it would hold
the GIL that the MQTT network thread and the InfluxDB writer also need. ``Checker`` spreads
a run of messages over a few processes and returns the results in the order of the run.
The processes are started (and import the schemas) when the ingester starts.

A run too small to be worth the round trip is checked in the calling thread, and so is
every run if the processes cannot be used (one died, the machine has one CPU): the result
is the same either way, only where it is computed differs.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from schemas.topics import Topics
from services.common.logging import get_logger
from services.ingester.domain import Accepted, Refused, validate_message

__all__ = ["Checker", "check_messages"]

log = get_logger(__name__)

#: Runs of fewer messages are checked in the calling thread.
_MIN_RUN = 8
#: Worker processes at most (one per CPU up to this).
_MAX_WORKERS = 4


def check_messages(prefix: str, messages: list[tuple[str, bytes]]) -> list[Accepted | Refused]:
    """``validate_message`` for each (topic, payload); enrolment is checked by the caller."""
    topics = Topics(prefix)
    return [
        validate_message(topic, payload, topics=topics, is_known=_known_yes)
        for topic, payload in messages
    ]


def _known_yes(_: str) -> bool:
    # The real check happens atomically in Spool.check_or_set_aside.
    return True


class Checker:
    """``check`` runs of messages, in worker processes when it pays; ``close`` when done."""

    def __init__(self, prefix: str, *, workers: int | None = None) -> None:
        self.prefix = prefix
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.workers = min(_MAX_WORKERS, cpus or 1) if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start the worker processes (they import the schemas meanwhile)."""
        if self.workers > 1:
            with self._lock:
                self._pool = self._new_pool()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def check(self, messages: list[tuple[str, bytes]]) -> list[Accepted | Refused]:
        """The result of each message, in order."""
        return self.submit(messages)()

    def submit(self, messages: list[tuple[str, bytes]]) -> Callable[[], list[Accepted | Refused]]:
        """Start checking ``messages``; the returned function waits for their results.

        Between the two the caller may do other work (commit the previous run) while
        the worker processes check this one.
        """
        pool = self._pool
        if pool is None or len(messages) < _MIN_RUN:
            return functools.partial(check_messages, self.prefix, messages)
        size = -(-len(messages) // self.workers)
        try:
            futures: list[Future[list[Accepted | Refused]]] = [
                pool.submit(check_messages, self.prefix, messages[i : i + size])
                for i in range(0, len(messages), size)
            ]
        except (BrokenProcessPool, RuntimeError) as exc:  # RuntimeError: shut down
            return self._in_place(pool, exc, messages)

        def results() -> list[Accepted | Refused]:
            try:
                return [result for future in futures for result in future.result()]
            except BrokenProcessPool as exc:
                return self._in_place(pool, exc, messages)()

        return results

    def _in_place(
        self, pool: ProcessPoolExecutor, exc: Exception, messages: list[tuple[str, bytes]]
    ) -> Callable[[], list[Accepted | Refused]]:
        log.warning("a checking process died; starting new ones", error=str(exc))
        self._replace(pool)
        return functools.partial(check_messages, self.prefix, messages)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is not broken or self._closed:
                return
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_watch_parent,
            initargs=(os.getpid(),),
        )
        for _ in range(self.workers):  # spawn them all now, not at the first run
            pool.submit(_ready)
        return pool


def _ready() -> None:
    """Nothing: calling it in a worker has it import this module and the schemas."""


def _watch_parent(parent: int) -> None:
    # Ctrl-C reaches the whole process group: the ingester stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # A worker outlives an ingester killed with SIGKILL (its queue never closes): leave
    # when the parent is gone.
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()

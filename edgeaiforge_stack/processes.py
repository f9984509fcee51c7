"""Processes of the local stack: started detached and recorded, judged alive by pid and
start time, stopped by process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from edgeaiforge_stack.layout import StackLayout

__all__ = [
    "STOP_GRACE",
    "Stopped",
    "alive",
    "cmdline",
    "ours_starting",
    "process_running",
    "spawn",
    "start_time",
    "stop_process",
    "stop_processes",
]

#: Seconds ``down`` and ``fleet stop`` wait after SIGTERM before SIGKILL.
STOP_GRACE = 10.0
#: Seconds to wait for a process to be gone after SIGKILL.
_KILL_WAIT = 5.0
#: Seconds ``spawn`` waits for a new process to show its command line.
_EXEC_TIMEOUT = 10.0


@dataclass(frozen=True)
class Stopped:
    """One process that ``down`` or ``fleet stop`` stopped: gone when this is returned."""

    name: str
    pid: int
    #: Seconds from SIGTERM until the process (and its helpers) were gone.
    seconds: float
    #: It outlived the grace period and was killed with SIGKILL.
    killed: bool = False
    #: False only if it survived even SIGKILL (its record stays, so status shows it).
    gone: bool = True


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # A zombie has an empty command line: it no longer runs.
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part] or None


def _stat(pid: int | str, task: str = "") -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) from ``/proc/<pid>/stat``."""
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    try:
        # The command name (field 2) may hold spaces and parentheses: split after its end.
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2]), int(fields[19])


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, it names one process
    for good, since a reused pid gets a later start time."""
    stat = _stat(pid)
    return stat[2] if stat is not None else None


def alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` still runs (any of its threads has not exited) and, given
    ``started``, is still the process that began then.

    Unlike the command line, this holds from fork to exit: a process between fork and
    exec, and one whose main thread has exited while others still run (its command line
    is empty then), both count as alive.
    """
    stat = _stat(pid)
    if stat is None or (started is not None and stat[2] != started):
        return False
    if stat[0] not in "ZX":
        return True
    try:
        tasks = [t.name for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    return any((s := _stat(pid, t)) is not None and s[0] not in "ZX" for t in tasks)


def _group_alive(group: int) -> bool:
    """Whether any live process is left in process group ``group``."""
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(entry.name)
        if stat is not None and stat[1] == group and alive(int(entry.name), stat[2]):
            return True
    return False


def process_running(record: Mapping[str, Any] | None) -> TypeGuard[Mapping[str, Any]]:
    """Whether the recorded process still runs *and* is the one we started.

    A pid alone could by now name another program; the command line must match too.
    """
    if record is None:
        return False
    live = cmdline(int(record["pid"]))
    return live is not None and live == list(record["argv"])


def ours_starting(record: Mapping[str, Any] | None, fresh: bool) -> bool:
    """Alive but not (yet) showing its command line: a process caught between fork and
    exec, or in the middle of exec. It is ours if we just started it, or if it still has
    the recorded start time; a record without one and a different program is a reused pid.
    """
    if record is None:
        return False
    started = record.get("started")
    if started is None and not fresh:
        return False
    return alive(int(record["pid"]), started)


def spawn(
    layout: StackLayout,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    **extra: Any,
) -> int:
    """Start ``argv`` detached (own session), output to ``log/<name>.log``, and record it.

    Returns once the process runs ``argv`` (its ``/proc`` command line shows it) or has
    exited, so what is recorded can be judged at once.
    """
    layout.logs.mkdir(parents=True, exist_ok=True)
    with layout.log(name).open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name} ---\n".encode())
        log.flush()
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    # Popen returns once exec has begun, not once it has finished: until the kernel has
    # set the new program's arguments, /proc/<pid>/cmdline is empty (or, before the exec,
    # the parent's). On a busy machine that gap is long enough to be seen.
    started = start_time(process.pid)
    deadline = time.monotonic() + _EXEC_TIMEOUT
    while process.poll() is None and cmdline(process.pid) != list(argv):
        if time.monotonic() > deadline:
            break  # e.g. a script whose interpreter shows in its place: judged by pid
        time.sleep(0.01)
    layout.write_record(name, process.pid, argv, started=started, **extra)
    return process.pid


def stop_processes(
    layout: StackLayout, names: Sequence[str], *, grace: float = STOP_GRACE
) -> list[Stopped]:
    """Stop the recorded processes ``names`` together and return once they are gone.

    SIGTERM to each one's process group; whatever still runs ``grace`` seconds later gets
    SIGKILL. Helpers left in a group (the validator's sandboxed workers) are killed once
    their leader is gone. Records of processes that no longer run are removed; a record
    whose pid now belongs to another program is removed without a signal.
    """
    began = time.monotonic()
    # name -> (pid, start time, group to signal or None for the pid alone)
    targets: dict[str, tuple[int, int | None, int | None]] = {}
    for name in names:
        record = layout.read_record(name)
        if process_running(record) or ours_starting(record, fresh=False):
            assert record is not None
            pid = int(record["pid"])
            stat = _stat(pid)
            # Every process was started as the leader of its own session, so its group
            # holds it and its helpers and nothing else.
            group = pid if stat is not None and stat[1] == pid else None
            targets[name] = (pid, stat[2] if stat is not None else None, group)
            _signal(pid, group, signal.SIGTERM)
        else:
            layout.record(name).unlink(missing_ok=True)
    done: dict[str, Stopped] = {}
    killed: set[str] = set()
    deadline = began + grace
    while len(done) < len(targets):
        for name, (pid, started, group) in targets.items():
            if name in done or alive(pid, started):
                continue
            if group is not None and _group_alive(group):
                # Helpers that outlived their leader (the group lives on with them, so its
                # id cannot have been given to anyone else).
                _signal(pid, group, signal.SIGKILL)
                if time.monotonic() < deadline + _KILL_WAIT:
                    continue
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
            done[name] = Stopped(name, pid, time.monotonic() - began, name in killed)
            layout.record(name).unlink(missing_ok=True)
        now = time.monotonic()
        if now >= deadline:
            for name, (pid, _, group) in targets.items():
                if name not in done and name not in killed:
                    killed.add(name)
                    _signal(pid, group, signal.SIGKILL)
        if now >= deadline + _KILL_WAIT:
            break  # not gone even after SIGKILL (uninterruptible I/O): say so below
        if len(done) < len(targets):
            time.sleep(0.05)
    for name, (pid, _, _) in targets.items():
        if name not in done:
            # Still there after SIGKILL: keep its record, so status shows it.
            done[name] = Stopped(name, pid, time.monotonic() - began, killed=True, gone=False)
    return [done[n] for n in names if n in done]


def stop_process(layout: StackLayout, name: str) -> bool:
    """Stop one recorded process (see ``stop_processes``); True if it ran."""
    return bool(stop_processes(layout, [name]))


def _signal(pid: int, group: int | None, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group is not None:
            os.killpg(group, sig)
        else:
            os.kill(pid, sig)

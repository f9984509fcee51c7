"""The sandboxed worker: ``python -I -m services.validator._worker`` (started by
``services.validator.sandbox``, never by hand).

It reads one JSON task from stdin, confines itself (limits, network namespace,
``nobody``) before importing anything that parses the untrusted files, reads the task's
arguments (a later line), runs the task and writes one JSON line per step to its original
stdout. Everything else written to stdout (by native
libraries) is sent to stderr so that it cannot corrupt the answer.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import json
import math
import os
import resource
import socket
import sys
from typing import Any

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_NOBODY = 65534
#: Codecs the standard library looks up lazily (zip member names, host names, files).
_PRELOADED_CODECS = ("cp437", "idna", "latin_1", "ascii", "utf_8", "utf_16", "utf_32")


def _limit(which: int, value: int) -> None:
    resource.setrlimit(which, (value, value))


def _apply_limits(cpu_seconds: int, memory_mb: int, steps: int) -> None:
    # Soft CPU limit sends SIGXCPU; the hard limit a second later is SIGKILL, in case the
    # signal is caught or ignored by native code. A task of several steps gets the CPU
    # seconds of one task per step: the soft limit moves before each step (``main``).
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds * steps + 1))
    _limit(resource.RLIMIT_AS, memory_mb * 1024 * 1024)
    _limit(resource.RLIMIT_CORE, 0)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), min(1024, hard)))


def _isolate_network() -> str:
    """Enter a new network namespace and prove that nothing is reachable from it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # die with the service
    if os.geteuid() == 0:
        flags, kind = _CLONE_NEWNET, "netns"
    else:
        # Unprivileged: a user namespace grants the right to make a network namespace.
        flags, kind = _CLONE_NEWUSER | _CLONE_NEWNET, "userns+netns"
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare({kind}) failed: {os.strerror(err)}")
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"]:
        raise OSError(errno.EPERM, f"network namespace still has interfaces {names}")
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(("127.0.0.1", 9))
    except OSError as exc:
        if exc.errno != errno.ENETUNREACH:
            raise OSError(errno.EPERM, f"loopback answered unexpectedly: {exc}") from None
    else:
        raise OSError(errno.EPERM, "loopback is reachable inside the namespace")
    finally:
        probe.close()
    return kind


def _drop_privileges() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(_NOBODY)
        os.setuid(_NOBODY)


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _error(exc: BaseException, isolation: str) -> dict[str, Any]:
    if isinstance(exc, MemoryError):
        return {"status": "memory_limit", "detail": "MemoryError", "isolation": isolation}
    text = str(exc).strip().splitlines()
    first = text[0][:500] if text else ""
    status = "memory_limit" if "bad_alloc" in str(exc) else "error"
    return {"status": status, "detail": f"{type(exc).__name__}: {first}", "isolation": isolation}


def main() -> None:
    """Run one task; each answer is a single JSON line on the original stdout.

    On stdin: one line with the task and its limits, read before anything else; then,
    once the worker has confined itself and imported the task, it says so (a ``ready``
    line before any answer) and reads one line per step, each the signal to run the step
    (the first holds the task's keyword arguments). The parent can so start a worker
    before the files it will read exist, and hold a step back. A task of one step returns
    its answer. A task of several steps (``steps``) is a generator: each value it yields
    is one answer, and each step gets the CPU seconds of a whole task (the soft
    RLIMIT_CPU moves before each step; the hard limit covers all of them).
    """
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    spec = json.loads(sys.stdin.readline())

    def say(reply: dict[str, Any]) -> None:
        answer.write(json.dumps(reply) + "\n")
        answer.flush()

    try:
        isolation = _isolate_network()
    except OSError as exc:
        isolation = "none"
        if spec.get("require_isolation", True):
            say({"status": "isolation", "detail": str(exc), "isolation": isolation})
            return
    steps = max(1, int(spec.get("steps", 1)))
    cpu_seconds = int(spec["cpu_seconds"])
    _apply_limits(cpu_seconds, int(spec["memory_mb"]), steps)
    module_name, _, func_name = str(spec["task"]).partition(":")
    try:
        # Our own code is imported while still privileged: the interpreter may live where
        # ``nobody`` cannot read (e.g. under /root). The untrusted files are opened only
        # after the drop.
        for codec in _PRELOADED_CODECS:
            importlib.import_module(f"encodings.{codec}")
        func = getattr(importlib.import_module(module_name), func_name)
        _drop_privileges()
        say({"status": "ready", "isolation": isolation})
        first = sys.stdin.readline()
        if not first:
            return  # the parent gave up before the first step
        kwargs = json.loads(first)
        if steps == 1:
            say({"status": "ok", "value": func(**kwargs), "isolation": isolation})
            return
        results = iter(func(**kwargs))
        for step in range(steps):
            if step:
                if not sys.stdin.readline():
                    return  # no more steps wanted
                # This step's CPU seconds count from now; never past the hard limit.
                soft = min(math.ceil(_cpu_used()) + cpu_seconds, cpu_seconds * steps)
                resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_seconds * steps + 1))
            try:
                value = next(results)
            except StopIteration:
                return
            say({"status": "ok", "value": value, "isolation": isolation})
    except Exception as exc:  # MemoryError included
        say(_error(exc, isolation))


if __name__ == "__main__":
    main()

"""The sandboxed worker: ``python -I -m modelkit._worker`` (started by
``modelkit.sandbox``, never by hand).

It reads one JSON task from stdin, confines itself (limits, network namespace,
``nobody``) before importing anything that parses the untrusted files, reads the task's
arguments (a later line), runs the task and writes one JSON line per step to its original
stdout. Everything else written to stdout (by native
libraries) is sent to stderr so that it cannot corrupt the answer.
"""

from __future__ import annotations

import contextlib
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

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
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
    """Enter a new network namespace and prove that nothing is reachable from it.

    As root, the worker also enters a mount namespace of its own (while it still has one
    thread, as ``unshare`` wants), where ``_expose_runtime`` later makes its libraries
    reachable for ``nobody``; where that is refused, the network namespace alone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # die with the service
    if os.geteuid() == 0:
        flags, kind = _CLONE_NEWNET, "netns"
        if libc.unshare(_CLONE_NEWNS) == 0:
            # Nothing mounted here may reach the host's namespace.
            if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) == 0:
                global _OWN_MOUNTS
                _OWN_MOUNTS = True
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


#: Whether the worker has a private mount namespace (as root, where mounts are allowed).
_OWN_MOUNTS = False


def _searchable(path: str) -> bool:
    """Whether ``nobody`` (no supplementary groups) may pass through directory ``path``."""
    st = os.stat(path)
    if st.st_uid == _NOBODY:
        return bool(st.st_mode & 0o100)
    if st.st_gid == _NOBODY:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _first_blocked(path: str) -> str | None:
    """The highest directory above ``path`` that ``nobody`` cannot pass through (its
    real directories only: a symbolic link's target has its own entry, ``realpath``)."""
    parts = path.strip("/").split("/")
    for i in range(len(parts)):
        above = "/" + "/".join(parts[:i])
        if not os.path.islink(above) and not _searchable(above):
            return above
    return None


def _runtime_paths() -> list[str]:
    """The directories the worker's code was imported from (the outermost of each: the
    import path's entries, the project's packages) and its work directory."""
    found = {os.getcwd(), *(p for p in sys.path if p)}
    for module in list(sys.modules.values()):
        with contextlib.suppress(Exception):  # odd module objects (lazy proxies) are skipped
            found.update(str(p) for p in getattr(module, "__path__", None) or ())
            if isinstance(module.__file__, str):
                found.add(os.path.dirname(module.__file__))
    outermost: list[str] = []
    for path in sorted(found):  # a directory sorts before what lies below it
        if not (outermost and path.startswith(outermost[-1] + "/")):
            outermost.append(path)
    both = {p for path in outermost for p in (path, os.path.realpath(path))}
    return sorted(p for p in both if os.path.isdir(p))


def _plan(paths: list[str]) -> dict[str, list[str]]:
    """For each directory that bars ``nobody`` from one of ``paths``: those below it."""
    plan: dict[str, list[str]] = {}
    for path in paths:
        barrier = _first_blocked(path)
        if barrier is not None:
            plan.setdefault(barrier, []).append(path)
    return plan


def _expose_runtime() -> int:
    """Make the worker's own libraries, code and work directory reachable for ``nobody``
    in the worker's private mount namespace; returns how many directories were shown.

    A checkout, virtualenv or interpreter inside a directory only its owner may enter
    (root's home, ``mktemp -d``) would otherwise hide every module imported after the
    privilege drop (``numpy.ma`` from ``np.percentile``, onnx's lazy submodules, codecs).
    Each barring directory is covered, in this namespace only, by an empty tmpfs in which
    exactly those directories are bound back, so the worker sees less of it than before,
    not more; the host and the service see nothing of it. Without a mount namespace
    (mounts refused) nothing changes: the service's start-up self-test then tells."""
    if not _OWN_MOUNTS or os.geteuid() != 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    plan = _plan(_runtime_paths())
    # Held open before any tmpfs hides the original paths; bound through /proc/self/fd.
    handles = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for shown in plan.values() for p in shown}
    try:
        for barrier, shown in sorted(plan.items()):
            if libc.mount(b"tmpfs", barrier.encode(), b"tmpfs", 0, b"mode=0755,size=1m") != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mount tmpfs on {barrier}: {os.strerror(err)}")
            for path in shown:
                os.makedirs(path, exist_ok=True)
                source = f"/proc/self/fd/{handles[path]}".encode()
                if libc.mount(source, path.encode(), None, _MS_BIND | _MS_REC, None) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"bind {path}: {os.strerror(err)}")
    finally:
        for fd in handles.values():
            os.close(fd)
    return sum(len(shown) for shown in plan.values())


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
        try:
            _expose_runtime()
        except OSError as exc:
            # Not fatal: where nothing bars ``nobody`` nothing was needed; where something
            # does, the first lazy import fails and is reported as the platform's fault.
            print(
                f"worker: cannot expose its libraries to the sandbox user: {exc}", file=sys.stderr
            )
        _drop_privileges()
    except Exception as exc:
        say({**_error(exc, isolation), "platform": True})
        return
    say({"status": "ready", "isolation": isolation})
    try:
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
        reply = _error(exc, isolation)
        if isinstance(exc, ImportError):
            # Nothing in a model makes the worker import a module: the installation does.
            reply["platform"] = True
        say(reply)


if __name__ == "__main__":
    main()

"""The sandboxed worker: ``python -I -m services.validator._worker`` (started by
``services.validator.sandbox.run_task``, never by hand).

It reads one JSON task from stdin, confines itself (limits, network namespace, ``nobody``)
before importing anything that parses the untrusted files, runs the task and writes one
JSON line to its original stdout. Everything else written to stdout (by native
libraries) is sent to stderr so that it cannot corrupt the answer.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import json
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


def _apply_limits(cpu_seconds: int, memory_mb: int) -> None:
    # Soft CPU limit sends SIGXCPU; the hard limit a second later is SIGKILL, in case the
    # signal is caught or ignored by native code.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
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


def main() -> None:
    """Run one task; the answer is a single JSON line on the original stdout."""
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    spec = json.loads(sys.stdin.read())
    reply: dict[str, Any]
    try:
        isolation = _isolate_network()
    except OSError as exc:
        isolation = "none"
        if spec.get("require_isolation", True):
            reply = {"status": "isolation", "detail": str(exc), "isolation": isolation}
            answer.write(json.dumps(reply) + "\n")
            answer.flush()
            return
    _apply_limits(int(spec["cpu_seconds"]), int(spec["memory_mb"]))
    module_name, _, func_name = str(spec["task"]).partition(":")
    try:
        # Our own code is imported while still privileged: the interpreter may live where
        # ``nobody`` cannot read (e.g. under /root). The untrusted files are opened only
        # after the drop.
        for codec in _PRELOADED_CODECS:
            importlib.import_module(f"encodings.{codec}")
        func = getattr(importlib.import_module(module_name), func_name)
        _drop_privileges()
        value = func(**spec["kwargs"])
        reply = {"status": "ok", "value": value, "isolation": isolation}
    except MemoryError:
        reply = {"status": "memory_limit", "detail": "MemoryError", "isolation": isolation}
    except Exception as exc:
        text = str(exc).strip().splitlines()
        first = text[0][:500] if text else ""
        status = "memory_limit" if "bad_alloc" in str(exc) else "error"
        reply = {
            "status": status,
            "detail": f"{type(exc).__name__}: {first}",
            "isolation": isolation,
        }
    answer.write(json.dumps(reply) + "\n")
    answer.flush()


if __name__ == "__main__":
    main()

"""Diagnostic tasks that prove the sandbox's confinement (used by its tests and by
operators checking a host): each tries something a hostile model might. The services'
start-up self-tests are ``modelkit.probe``'s."""

from __future__ import annotations

import importlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = [
    "abort",
    "allocate",
    "connect",
    "identity",
    "lazy_import",
    "pid",
    "plant_link",
    "read_file",
    "sleep",
    "spin",
    "steps",
]


def lazy_import(module: str) -> dict[str, Any]:
    """Import ``module`` now, after the worker has confined itself (as a library's lazy
    import does); where it came from, and who imported it."""
    loaded = importlib.import_module(module)
    return {"file": str(getattr(loaded, "__file__", "")), "uid": os.getuid(), "prefix": sys.prefix}


def connect(host: str, port: int) -> dict[str, Any]:
    """Try a TCP connection; report whether it got through."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return {"connected": True, "error": ""}
    except OSError as exc:
        return {"connected": False, "error": str(exc)}


def allocate(megabytes: int) -> int:
    """Allocate and touch ``megabytes`` MiB."""
    block = bytearray(megabytes * 1024 * 1024)
    block[::4096] = b"\1" * len(block[::4096])
    return len(block)


def spin() -> None:
    """Burn CPU forever."""
    while True:
        sum(range(10_000))


def sleep(seconds: float) -> None:
    """Hang without using CPU."""
    time.sleep(seconds)


def abort() -> None:
    """Die as a crashing native library would."""
    os.abort()


def identity() -> dict[str, int]:
    """The user the worker runs as."""
    return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid()}


def plant_link(target: str, link: str) -> bool:
    """Try to put a symbolic link where the service will write next."""
    os.symlink(target, link)
    return True


def pid() -> int:
    """The worker's process id."""
    return os.getpid()


def read_file(path: str) -> int:
    """Read a file; its size."""
    with open(path, "rb") as f:
        return len(f.read())


def burn(seconds: float) -> float:
    """Use about ``seconds`` of CPU time; returns what was used."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        sum(range(10_000))
    return time.process_time() - start


def steps(plan: list[list[Any]]) -> Iterator[Any]:
    """A task of several steps: each ``[action, argument]`` of ``plan`` is one step
    (``value``, ``burn``, ``sleep``, ``spin``, ``abort``, ``read``, ``raise``)."""
    for action, argument in plan:
        if action == "value":
            yield argument
        elif action == "burn":
            yield burn(float(argument))
        elif action == "sleep":
            sleep(float(argument))
            yield None
        elif action == "spin":
            spin()
        elif action == "abort":
            abort()
        elif action == "read":
            yield read_file(str(argument))
        else:
            raise RuntimeError(str(argument))

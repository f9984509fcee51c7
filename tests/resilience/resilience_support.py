"""Helpers shared by the resilience tests: waiting, device seeding, subprocess runtimes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edge_runtime import StateDir
from edge_runtime._state import Installed
from schemas.transfer import ActiveModel

REPO = Path(__file__).resolve().parents[2]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seed_installed(state_dir: Path, model: str, version: str, sequence: int, data: bytes) -> None:
    """Leave ``data`` installed and active, as a finished earlier deployment would."""
    state = StateDir(state_dir)
    info = ActiveModel(model=model, version=version, sequence=sequence, artifact_id=sha256(data))
    path = state.model_path(info.artifact_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    state.save_installed(Installed(active=info, previous=None))
    state.accept_sequence(model, sequence)


async def start_runtime_process(
    state_dir: Path, log: Path, *, env: dict[str, str] | None = None, stall: float = 1.0
) -> asyncio.subprocess.Process:
    """``edge-runtime run`` for ``state_dir`` as its own process (no HTTP endpoint)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_runtime", "run", "--state-dir", str(state_dir),
        "--http", "", "--stall-timeout", str(stall),
        cwd=REPO, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL, stderr=log.open("ab"),
    )  # fmt: skip

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


# ---- an idempotent consumer's ledger (events tests) ---------------------------------------

LEDGER_SQL = "CREATE TABLE IF NOT EXISTS ledger (event_id TEXT NOT NULL, what TEXT NOT NULL)"


async def apply_once(engine, consumer: str, event_id, what: str) -> bool:
    """The side effect of one event, recorded with ``claim_event`` in one transaction.

    The ledger has no unique key on purpose: an event applied twice shows as two rows.
    """
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession

    from services.common.db import claim_event

    async with AsyncSession(engine) as session, session.begin():
        if not await claim_event(session, consumer=consumer, event_id=event_id):
            return False
        await session.execute(
            text("INSERT INTO ledger (event_id, what) VALUES (:e, :w)"),
            {"e": str(event_id), "w": what},
        )
    return True


async def open_ledger(path: Path):
    """An engine on the SQLite file ``path`` with the ledger and processed-events tables."""
    from sqlalchemy import text

    from schemas.config import DatabaseConfig
    from services.common.db import create_engine
    from services.common.migrate import upgrade

    engine = create_engine(DatabaseConfig(url=f"sqlite+aiosqlite:///{path}"))
    await upgrade(engine, "services.common")
    async with engine.begin() as conn:
        await conn.execute(text(LEDGER_SQL))
    return engine


async def ledger_rows(engine) -> list[tuple[str, str]]:
    from sqlalchemy import text

    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT event_id, what FROM ledger"))).all()
    return [(str(a), str(b)) for a, b in rows]

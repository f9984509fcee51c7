"""The SQL database: an async engine factory (SQLite by default, PostgreSQL by URL) and the
processed-events table that makes event handlers idempotent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, String, event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.config import DatabaseConfig

__all__ = [
    "CommonBase",
    "ProcessedEvent",
    "claim_event",
    "create_engine",
    "is_processed",
]


def create_engine(config: DatabaseConfig) -> AsyncEngine:
    """An engine for ``config.url``; SQLite files get WAL, foreign keys and a busy timeout."""
    url = make_url(config.url)
    kwargs: dict[str, Any] = {"echo": config.echo}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


class CommonBase(DeclarativeBase):
    """The tables of ``services.common`` (its migrations: ``services/common/migrations``)."""


class ProcessedEvent(CommonBase):
    """One row per (consumer, event) whose side effect is committed."""

    __tablename__ = "processed_events"

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )


async def is_processed(session: AsyncSession, *, consumer: str, event_id: uuid.UUID) -> bool:
    """Whether ``consumer`` has recorded ``event_id`` as handled."""
    seen = await session.scalar(
        select(ProcessedEvent.event_id).where(
            ProcessedEvent.consumer == consumer, ProcessedEvent.event_id == str(event_id)
        )
    )
    return seen is not None


async def claim_event(session: AsyncSession, *, consumer: str, event_id: uuid.UUID) -> bool:
    """Record that ``consumer`` handles ``event_id`` in the caller's transaction.

    Returns False if the event was already handled: the caller then does nothing. Because
    the row commits with the side effect, a crash between them cannot split the two.
    """
    if await is_processed(session, consumer=consumer, event_id=event_id):
        return False
    await session.execute(insert(ProcessedEvent).values(consumer=consumer, event_id=str(event_id)))
    return True

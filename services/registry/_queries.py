"""What every part of the registry store shares: sessions, transactions, lookups by name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from schemas.registry import VersionInfo, VersionMetadata, VersionStatus
from services.common.migrate import upgrade
from services.registry.errors import ModelNotFound, VersionNotFound
from services.registry.tables import AliasRow, ModelRow, VersionRow

__all__ = ["Queries", "aware", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Queries:
    """The engine, its sessions, and the lookups the other parts of the store build on."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def create_tables(self) -> None:
        """Bring the registry's tables (and the shared ones) to their newest revision."""
        await upgrade(self.engine, "services.common", "services.registry")

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session, session.begin():
            yield session

    async def _model(self, s: AsyncSession, name: str) -> ModelRow:
        row = await s.scalar(select(ModelRow).where(ModelRow.name == name))
        if row is None:
            raise ModelNotFound(name)
        return row

    async def _resolve(self, s: AsyncSession, model: ModelRow, ref: str) -> VersionRow:
        row = await s.scalar(
            select(VersionRow).where(VersionRow.model_id == model.id, VersionRow.version == ref)
        )
        if row is None:
            row = await s.scalar(
                select(VersionRow)
                .join(AliasRow, AliasRow.version_id == VersionRow.id)
                .where(AliasRow.model_id == model.id, AliasRow.name == ref)
            )
        if row is None:
            raise VersionNotFound(model.name, ref)
        return row

    async def _aliases_of(
        self, s: AsyncSession, version_ids: Sequence[int]
    ) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        if not version_ids:
            return out
        rows = await s.execute(
            select(AliasRow.version_id, AliasRow.name)
            .where(AliasRow.version_id.in_(version_ids))
            .order_by(AliasRow.name)
        )
        for vid, name in rows:
            out.setdefault(vid, []).append(name)
        return out

    @staticmethod
    def _info(model: str, row: VersionRow, aliases: Sequence[str] = ()) -> VersionInfo:
        return VersionInfo(
            model=model,
            version=row.version,
            sequence=row.sequence,
            artifact_id=row.artifact_id,
            size_bytes=row.size_bytes,
            status=VersionStatus(row.status),
            metadata=VersionMetadata(
                task=row.task,
                framework=row.framework,
                description=row.description,
                tags=tuple(row.tags or ()),
                properties=dict(row.properties or {}),
                source_url=row.source_url,
                parent_version=row.parent_version,
            ),
            uploaded_by=row.uploaded_by,
            uploaded_at=aware(row.uploaded_at),
            status_changed_at=aware(row.status_changed_at),
            aliases=tuple(aliases),
            rejection_reason=row.rejection_reason,
            reference_artifact_id=row.reference_artifact_id,
        )

"""The registry's aliases: a name per model that points at one of its versions."""

from __future__ import annotations

from sqlalchemy import select

from schemas.registry import AliasInfo, VersionStatus
from services.registry._queries import Queries, utc_now
from services.registry.errors import AliasOnRejected, VersionNotFound
from services.registry.tables import AliasRow, VersionRow

__all__ = ["Aliases"]


class Aliases(Queries):
    """Setting and removing aliases. Each method is one transaction."""

    async def set_alias(self, model: str, alias: str, version: str) -> AliasInfo:
        """Point ``alias`` at ``version``: one row written in one transaction, so readers
        see the old target or the new one, never neither.

        A rejected version is refused (``AliasOnRejected``, 409); one still being validated
        is accepted, and ``apply_report`` drops the alias if the version is rejected later.
        """
        async with self._tx() as s:
            m = await self._model(s, model)
            # Locked, so a rejection applied meanwhile (which drops the version's aliases)
            # waits for this one and then sees the alias it must drop.
            row = await s.scalar(
                select(VersionRow)
                .where(VersionRow.model_id == m.id, VersionRow.version == version)
                .with_for_update()
            )
            if row is None:
                raise VersionNotFound(model, version)
            if row.status == VersionStatus.REJECTED.value:
                raise AliasOnRejected(model, version, alias, row.rejection_reason)
            current = await s.scalar(
                select(AliasRow).where(AliasRow.model_id == m.id, AliasRow.name == alias)
            )
            previous: str | None = None
            if current is None:
                s.add(AliasRow(model_id=m.id, name=alias, version_id=row.id, updated_at=utc_now()))
            else:
                previous = await s.scalar(
                    select(VersionRow.version).where(VersionRow.id == current.version_id)
                )
                current.version_id = row.id
                current.updated_at = utc_now()
            return AliasInfo(model=model, alias=alias, version=version, previous_version=previous)

    async def delete_alias(self, model: str, alias: str) -> str:
        """Remove ``alias``; returns the version it pointed to."""
        async with self._tx() as s:
            m = await self._model(s, model)
            current = await s.scalar(
                select(AliasRow).where(AliasRow.model_id == m.id, AliasRow.name == alias)
            )
            if current is None:
                raise VersionNotFound(model, alias)
            version = await s.scalar(
                select(VersionRow.version).where(VersionRow.id == current.version_id)
            )
            await s.delete(current)
            return version or ""

"""The registry's reads and writes (SQLAlchemy 2, async; SQLite or PostgreSQL).

``RegistryStore`` puts together the parts in ``_versions``, ``_aliases`` and
``_api_keys``; the tables are in ``tables``. A report moves a version's status here,
since a rejection also drops the aliases that name the version.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from schemas.registry import VersionInfo, VersionStatus
from services.common.db import claim_event
from services.registry import domain
from services.registry._aliases import Aliases
from services.registry._api_keys import ApiKeys
from services.registry._queries import utc_now
from services.registry._versions import Versions
from services.registry.tables import AliasRow, ModelRow, VersionRow

__all__ = ["RegistryStore", "StatusUpdate"]


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """What an event handler changed (None when the event was a duplicate or stale)."""

    info: VersionInfo
    #: Aliases removed because the version was rejected (they named it while validating).
    dropped_aliases: tuple[str, ...] = ()


class RegistryStore(Versions, Aliases, ApiKeys):
    """All of the registry's reads and writes. Each method is one transaction."""

    async def apply_report(
        self,
        *,
        consumer: str,
        event_id: uuid.UUID,
        model: str,
        version: str,
        artifact_id: str,
        kind: domain.EventKind,
        report: dict[str, Any],
        reason: str = "",
    ) -> StatusUpdate | None:
        """Store a validator/analyzer report and move the status, once per event."""
        async with self._tx() as s:
            if not await claim_event(s, consumer=consumer, event_id=event_id):
                return None
            m = await s.scalar(select(ModelRow).where(ModelRow.name == model))
            if m is None:
                return None
            row = await s.scalar(
                select(VersionRow)
                .where(VersionRow.model_id == m.id, VersionRow.version == version)
                .with_for_update()  # against a concurrent set_alias: see there
            )
            # A report for bytes that are no longer this version's (deleted and uploaded
            # again) describes something else: drop it.
            if row is None or row.artifact_id != artifact_id:
                return None
            if kind == "analyzed":
                row.analysis_report = report
            else:
                row.validation_report = report
            if kind == "rejected":
                row.rejection_reason = reason
            new = domain.next_status(VersionStatus(row.status), kind)
            if new.value != row.status:
                row.status = new.value
                row.status_changed_at = utc_now()
            await s.flush()
            dropped: tuple[str, ...] = ()
            if new is VersionStatus.REJECTED:
                # An alias set while the version was validating must not outlive its
                # rejection: whatever deploys the alias would deploy a rejected model.
                dropped = tuple((await self._aliases_of(s, [row.id])).get(row.id, ()))
                if dropped:
                    await s.execute(delete(AliasRow).where(AliasRow.version_id == row.id))
            return StatusUpdate(self._info(m.name, row), dropped_aliases=dropped)

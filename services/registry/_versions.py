"""The registry's models and versions: create, read, list, update, delete, references."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.registry import (
    CreateVersionRequest,
    ListModelsRequest,
    ListVersionsRequest,
    ModelInfo,
    ModelPage,
    UpdateMetadataRequest,
    VersionInfo,
    VersionPage,
    VersionReports,
    VersionStatus,
)
from services.registry import domain
from services.registry._queries import Queries, aware, utc_now
from services.registry.errors import AliasInUse, VersionExists, VersionNotFound
from services.registry.tables import AliasRow, ModelRow, TagRow, VersionRow

__all__ = ["Versions"]


class Versions(Queries):
    """Models and their versions. Each method is one transaction."""

    async def get_version(self, model: str, ref: str) -> VersionInfo:
        async with self.sessions() as s:
            m = await self._model(s, model)
            row = await self._resolve(s, m, ref)
            aliases = await self._aliases_of(s, [row.id])
            return self._info(m.name, row, aliases.get(row.id, ()))

    async def list_versions(self, req: ListVersionsRequest) -> VersionPage:
        async with self.sessions() as s:
            m = await self._model(s, req.model)
            q = select(VersionRow).where(VersionRow.model_id == m.id)
            if req.status is not None:
                q = q.where(VersionRow.status == req.status.value)
            if req.tag is not None:
                q = q.where(
                    VersionRow.id.in_(select(TagRow.version_id).where(TagRow.tag == req.tag))
                )
            total = await s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = list(
                await s.scalars(
                    q.order_by(VersionRow.sequence.desc()).offset(req.offset).limit(req.limit)
                )
            )
            aliases = await self._aliases_of(s, [r.id for r in rows])
            return VersionPage(
                total=total,
                offset=req.offset,
                limit=req.limit,
                items=tuple(self._info(m.name, r, aliases.get(r.id, ())) for r in rows),
            )

    async def _model_info(self, s: AsyncSession, m: ModelRow) -> ModelInfo:
        count = (
            await s.scalar(
                select(func.count()).select_from(VersionRow).where(VersionRow.model_id == m.id)
            )
            or 0
        )
        latest = await s.scalar(
            select(VersionRow)
            .where(VersionRow.model_id == m.id)
            .order_by(VersionRow.sequence.desc())
            .limit(1)
        )
        deployable = await s.scalar(
            select(VersionRow.version)
            .where(
                VersionRow.model_id == m.id,
                VersionRow.status.in_([st.value for st in domain.DEPLOYABLE]),
            )
            .order_by(VersionRow.sequence.desc())
            .limit(1)
        )
        alias_rows = await s.execute(
            select(AliasRow.name, VersionRow.version)
            .join(VersionRow, VersionRow.id == AliasRow.version_id)
            .where(AliasRow.model_id == m.id)
            .order_by(AliasRow.name)
        )
        return ModelInfo(
            name=m.name,
            created_at=aware(m.created_at),
            updated_at=aware(m.updated_at),
            version_count=count,
            latest_version=latest.version if latest else None,
            latest_sequence=m.last_sequence,
            deployable_version=deployable,
            aliases={row[0]: row[1] for row in alias_rows},
            task=latest.task if latest else "",
            tags=tuple(latest.tags or ()) if latest else (),
        )

    async def get_model(self, model: str) -> ModelInfo:
        async with self.sessions() as s:
            return await self._model_info(s, await self._model(s, model))

    async def list_models(self, req: ListModelsRequest) -> ModelPage:
        async with self.sessions() as s:
            q = select(ModelRow)
            if req.prefix:
                # Escape LIKE's wildcards: the prefix is the user's text, not a pattern.
                esc = req.prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                q = q.where(ModelRow.name.like(esc + "%", escape="\\"))
            if req.task is not None:
                q = q.where(
                    ModelRow.id.in_(select(VersionRow.model_id).where(VersionRow.task == req.task))
                )
            if req.tag is not None:
                q = q.where(
                    ModelRow.id.in_(
                        select(VersionRow.model_id)
                        .join(TagRow, TagRow.version_id == VersionRow.id)
                        .where(TagRow.tag == req.tag)
                    )
                )
            total = await s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = list(
                await s.scalars(q.order_by(ModelRow.name).offset(req.offset).limit(req.limit))
            )
            items = tuple([await self._model_info(s, m) for m in rows])
            return ModelPage(total=total, offset=req.offset, limit=req.limit, items=items)

    async def get_reports(self, model: str, ref: str) -> VersionReports:
        async with self.sessions() as s:
            m = await self._model(s, model)
            row = await self._resolve(s, m, ref)
            return VersionReports(
                model=m.name,
                version=row.version,
                status=VersionStatus(row.status),
                validation=row.validation_report,
                analysis=row.analysis_report,
                rejection_reason=row.rejection_reason,
            )

    # ---- writing ------------------------------------------------------------------

    async def _get_or_create_model(self, s: AsyncSession, name: str) -> ModelRow:
        row = await s.scalar(select(ModelRow).where(ModelRow.name == name))
        if row is not None:
            return row
        now = utc_now()
        values = {"name": name, "created_at": now, "updated_at": now, "last_sequence": 0}
        # Two first uploads of a new model may race: the loser's insert does nothing.
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
        await s.execute(dialect_insert(ModelRow).values(**values).on_conflict_do_nothing())
        return await self._model(s, name)

    async def create_version(self, req: CreateVersionRequest) -> VersionInfo:
        """Record a stored artifact as a new version with the next sequence number."""
        try:
            async with self._tx() as s:
                m = await self._get_or_create_model(s, req.model)
                exists = await s.scalar(
                    select(VersionRow.id).where(
                        VersionRow.model_id == m.id, VersionRow.version == req.version
                    )
                )
                if exists is not None:
                    raise VersionExists(req.model, req.version)
                # The row update both allocates the number and locks the model row, so
                # concurrent uploads get distinct, growing numbers.
                await s.execute(
                    update(ModelRow)
                    .where(ModelRow.id == m.id)
                    .values(last_sequence=ModelRow.last_sequence + 1, updated_at=utc_now())
                )
                sequence = await s.scalar(select(ModelRow.last_sequence).where(ModelRow.id == m.id))
                assert sequence is not None
                now = utc_now()
                md = req.metadata
                row = VersionRow(
                    model_id=m.id,
                    version=req.version,
                    sequence=sequence,
                    artifact_id=req.artifact_id,
                    size_bytes=req.size_bytes,
                    status=VersionStatus.UPLOADED.value,
                    task=md.task,
                    framework=md.framework,
                    description=md.description,
                    tags=list(dict.fromkeys(md.tags)),
                    properties=dict(md.properties),
                    source_url=md.source_url,
                    parent_version=md.parent_version,
                    uploaded_by=req.uploaded_by,
                    uploaded_at=now,
                    status_changed_at=now,
                    reference_artifact_id=req.reference_artifact_id,
                    uploaded_event_id=str(uuid.uuid4()),
                    rejection_reason="",
                )
                s.add(row)
                await s.flush()
                await self._set_tags(s, row.id, md.tags)
                return self._info(m.name, row)
        except IntegrityError:
            # The unique constraint caught a concurrent upload of the same version.
            raise VersionExists(req.model, req.version) from None

    @staticmethod
    async def _set_tags(s: AsyncSession, version_id: int, tags: Sequence[str]) -> None:
        await s.execute(delete(TagRow).where(TagRow.version_id == version_id))
        unique = list(dict.fromkeys(tags))
        if unique:
            await s.execute(insert(TagRow), [{"version_id": version_id, "tag": t} for t in unique])

    async def uploaded_event_id(self, model: str, version: str) -> tuple[str, VersionInfo]:
        async with self.sessions() as s:
            m = await self._model(s, model)
            row = await self._resolve(s, m, version)
            return row.uploaded_event_id, self._info(m.name, row)

    async def mark_validating(self, model: str, version: str) -> None:
        """The upload event is in the stream: the validator will pick the version up."""
        async with self._tx() as s:
            m = await self._model(s, model)
            await s.execute(
                update(VersionRow)
                .where(
                    VersionRow.model_id == m.id,
                    VersionRow.version == version,
                    VersionRow.status == VersionStatus.UPLOADED.value,
                )
                .values(status=VersionStatus.VALIDATING.value, status_changed_at=utc_now())
            )

    async def unpublished(self, older_than: datetime) -> list[tuple[str, str]]:
        """(model, version) of versions whose upload event may not have been published."""
        async with self.sessions() as s:
            rows = await s.execute(
                select(ModelRow.name, VersionRow.version)
                .join(ModelRow, ModelRow.id == VersionRow.model_id)
                .where(
                    VersionRow.status == VersionStatus.UPLOADED.value,
                    VersionRow.uploaded_at < older_than,
                )
            )
            return [(m, v) for m, v in rows]

    async def update_metadata(self, req: UpdateMetadataRequest) -> VersionInfo:
        async with self._tx() as s:
            m = await self._model(s, req.model)
            row = await self._resolve(s, m, req.version)
            if row.version != req.version:  # an alias of that name: not what was asked
                raise VersionNotFound(req.model, req.version)
            for field in ("task", "framework", "description", "source_url"):
                value = getattr(req, field)
                if value is not None:
                    setattr(row, field, value)
            if req.properties is not None:
                row.properties = dict(req.properties)
            if req.tags is not None:
                row.tags = list(dict.fromkeys(req.tags))
                await self._set_tags(s, row.id, req.tags)
            await s.flush()
            aliases = await self._aliases_of(s, [row.id])
            return self._info(m.name, row, aliases.get(row.id, ()))

    async def delete_version(self, model: str, version: str) -> tuple[VersionInfo, bool]:
        """Delete one version; the flag says whether its artifact is now unreferenced."""
        async with self._tx() as s:
            m = await self._model(s, model)
            row = await s.scalar(
                select(VersionRow).where(VersionRow.model_id == m.id, VersionRow.version == version)
            )
            if row is None:
                raise VersionNotFound(model, version)
            aliases = (await self._aliases_of(s, [row.id])).get(row.id, [])
            if aliases:
                raise AliasInUse(model, version, aliases)
            info = self._info(m.name, row)
            await s.execute(delete(TagRow).where(TagRow.version_id == row.id))
            await s.delete(row)
            await s.flush()
            orphan = not await self._referenced(s, info.artifact_id)
            return info, orphan

    @staticmethod
    async def _referenced(s: AsyncSession, artifact_id: str) -> bool:
        hit = await s.scalar(
            select(VersionRow.id)
            .where(
                (VersionRow.artifact_id == artifact_id)
                | (VersionRow.reference_artifact_id == artifact_id)
            )
            .limit(1)
        )
        return hit is not None

    async def referenced(self, artifact_id: str) -> bool:
        async with self.sessions() as s:
            return await self._referenced(s, artifact_id)

    async def referenced_ids(self) -> set[str]:
        """Every artifact a version refers to (its model or its reference data)."""
        async with self.sessions() as s:
            rows = await s.execute(select(VersionRow.artifact_id, VersionRow.reference_artifact_id))
        return {artifact for row in rows for artifact in row if artifact}

    async def retention_view(self, model: str) -> tuple[list[domain.RetentionCandidate], set[str]]:
        """Every version of ``model`` and the set of aliased ones."""
        async with self.sessions() as s:
            m = await self._model(s, model)
            rows = await s.execute(
                select(VersionRow.version, VersionRow.sequence, VersionRow.status).where(
                    VersionRow.model_id == m.id
                )
            )
            rejected = VersionStatus.REJECTED.value
            candidates = [
                domain.RetentionCandidate(v, seq, rejected=status == rejected)
                for v, seq, status in rows
            ]
            aliased = await s.scalars(
                select(VersionRow.version)
                .join(AliasRow, AliasRow.version_id == VersionRow.id)
                .where(AliasRow.model_id == m.id)
            )
            return candidates, set(aliased)

    async def model_names(self) -> list[str]:
        async with self.sessions() as s:
            return list(await s.scalars(select(ModelRow.name).order_by(ModelRow.name)))

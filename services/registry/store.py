"""The registry's tables and queries (SQLAlchemy 2, async; SQLite or PostgreSQL).

Tables are prefixed ``registry_`` because the services may share one database.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.registry import (
    AliasInfo,
    ApiKeyCreated,
    ApiKeyInfo,
    ApiRole,
    CreateVersionRequest,
    ListModelsRequest,
    ListVersionsRequest,
    ModelInfo,
    ModelPage,
    Principal,
    UpdateMetadataRequest,
    VersionInfo,
    VersionMetadata,
    VersionPage,
    VersionReports,
    VersionStatus,
)
from services.common.db import claim_event
from services.common.migrate import upgrade
from services.registry import domain
from services.registry.errors import (
    AliasInUse,
    AliasOnRejected,
    ApiKeyNotFound,
    ModelNotFound,
    Unauthorized,
    VersionExists,
    VersionNotFound,
)

__all__ = ["RegistryBase", "RegistryStore", "StatusUpdate"]


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class RegistryBase(DeclarativeBase):
    pass


class ModelRow(RegistryBase):
    __tablename__ = "registry_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The highest sequence ever given to a version of this model; never decreases.
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)


class VersionRow(RegistryBase):
    __tablename__ = "registry_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        UniqueConstraint("model_id", "sequence"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registry_models.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(128))
    sequence: Mapped[int] = mapped_column(BigInteger)
    artifact_id: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(200), default="")
    framework: Mapped[str] = mapped_column(String(100), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    properties: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    source_url: Mapped[str] = mapped_column(Text, default="")
    parent_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    uploaded_by: Mapped[str] = mapped_column(String(200), default="")
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reference_artifact_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: Event id of this version's ``eaf.model.uploaded``: a re-publish is deduplicated.
    uploaded_event_id: Mapped[str] = mapped_column(String(36))
    validation_report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    analysis_report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    rejection_reason: Mapped[str] = mapped_column(Text, default="")


class TagRow(RegistryBase):
    """One row per (version, tag), so tag filters and pagination happen in SQL."""

    __tablename__ = "registry_version_tags"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("registry_versions.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class AliasRow(RegistryBase):
    __tablename__ = "registry_aliases"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("registry_models.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("registry_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKeyRow(RegistryBase):
    __tablename__ = "registry_api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(200), default="")
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """What an event handler changed (None when the event was a duplicate or stale)."""

    info: VersionInfo
    #: Aliases removed because the version was rejected (they named it while validating).
    dropped_aliases: tuple[str, ...] = ()


class RegistryStore:
    """All of the registry's reads and writes. Each method is one transaction."""

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

    # ---- reading ------------------------------------------------------------------

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
            uploaded_at=_aware(row.uploaded_at),
            status_changed_at=_aware(row.status_changed_at),
            aliases=tuple(aliases),
            rejection_reason=row.rejection_reason,
            reference_artifact_id=row.reference_artifact_id,
        )

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
        alias_rows = await s.execute(
            select(AliasRow.name, VersionRow.version)
            .join(VersionRow, VersionRow.id == AliasRow.version_id)
            .where(AliasRow.model_id == m.id)
            .order_by(AliasRow.name)
        )
        return ModelInfo(
            name=m.name,
            created_at=_aware(m.created_at),
            updated_at=_aware(m.updated_at),
            version_count=count,
            latest_version=latest.version if latest else None,
            latest_sequence=m.last_sequence,
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
        now = _now()
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
                    .values(last_sequence=ModelRow.last_sequence + 1, updated_at=_now())
                )
                sequence = await s.scalar(select(ModelRow.last_sequence).where(ModelRow.id == m.id))
                assert sequence is not None
                now = _now()
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
                .values(status=VersionStatus.VALIDATING.value, status_changed_at=_now())
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
                s.add(AliasRow(model_id=m.id, name=alias, version_id=row.id, updated_at=_now()))
            else:
                previous = await s.scalar(
                    select(VersionRow.version).where(VersionRow.id == current.version_id)
                )
                current.version_id = row.id
                current.updated_at = _now()
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
                select(VersionRow.version, VersionRow.sequence).where(VersionRow.model_id == m.id)
            )
            candidates = [domain.RetentionCandidate(v, seq) for v, seq in rows]
            aliased = await s.scalars(
                select(VersionRow.version)
                .join(AliasRow, AliasRow.version_id == VersionRow.id)
                .where(AliasRow.model_id == m.id)
            )
            return candidates, set(aliased)

    async def model_names(self) -> list[str]:
        async with self.sessions() as s:
            return list(await s.scalars(select(ModelRow.name).order_by(ModelRow.name)))

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
                row.status_changed_at = _now()
            await s.flush()
            dropped: tuple[str, ...] = ()
            if new is VersionStatus.REJECTED:
                # An alias set while the version was validating must not outlive its
                # rejection: whatever deploys the alias would deploy a rejected model.
                dropped = tuple((await self._aliases_of(s, [row.id])).get(row.id, ()))
                if dropped:
                    await s.execute(delete(AliasRow).where(AliasRow.version_id == row.id))
            return StatusUpdate(self._info(m.name, row), dropped_aliases=dropped)

    # ---- API keys -----------------------------------------------------------------

    async def create_api_key(self, *, name: str, role: ApiRole, created_by: str) -> ApiKeyCreated:
        token = domain.new_api_token()
        now = _now()
        async with self._tx() as s:
            s.add(
                ApiKeyRow(
                    key_id=token.key_id,
                    name=name,
                    role=role,
                    secret_hash=domain.hash_secret(token.secret),
                    created_at=now,
                    created_by=created_by,
                )
            )
        info = ApiKeyInfo(
            key_id=token.key_id, name=name, role=role, created_at=now, created_by=created_by
        )
        return ApiKeyCreated(key=info, token=token.token)

    async def authenticate(self, token: str) -> Principal:
        parsed = domain.parse_token(token)
        if parsed is None:
            raise Unauthorized("the bearer token is not an EdgeAIForge API key")
        async with self.sessions() as s:
            row = await s.get(ApiKeyRow, parsed.key_id)
        if row is None or not domain.secret_matches(parsed.secret, row.secret_hash):
            raise Unauthorized("unknown API key")
        if row.revoked_at is not None:
            raise Unauthorized(f"API key {row.key_id} was revoked")
        return Principal(key_id=row.key_id, name=row.name, role=row.role)

    async def list_api_keys(self, include_revoked: bool) -> list[ApiKeyInfo]:
        async with self.sessions() as s:
            q = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
            if not include_revoked:
                q = q.where(ApiKeyRow.revoked_at.is_(None))
            rows = list(await s.scalars(q))
        return [self._key_info(r) for r in rows]

    @staticmethod
    def _key_info(r: ApiKeyRow) -> ApiKeyInfo:
        return ApiKeyInfo(
            key_id=r.key_id,
            name=r.name,
            role=r.role,
            created_at=_aware(r.created_at),
            created_by=r.created_by,
            revoked_at=_aware(r.revoked_at) if r.revoked_at else None,
        )

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        async with self._tx() as s:
            row = await s.get(ApiKeyRow, key_id)
            if row is None:
                raise ApiKeyNotFound(key_id)
            if row.revoked_at is None:
                row.revoked_at = _now()
            return self._key_info(row)

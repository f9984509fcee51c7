"""The registry's use cases: versions, aliases, reports, API keys, retention, outbox sweep."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import nats.errors

from schemas.config import Settings
from schemas.deployer import DeployerRpc
from schemas.events import (
    ModelAnalyzed,
    ModelRejected,
    ModelUploaded,
    ModelValidated,
    ModelVersionDeleted,
)
from schemas.registry import (
    AliasInfo,
    ApiKeyCreated,
    ApiKeyInfo,
    ApiKeyList,
    AuthenticateRequest,
    CreateApiKeyRequest,
    CreateVersionRequest,
    DeleteAliasRequest,
    Deleted,
    DeleteVersionRequest,
    GetModelRequest,
    GetReportsRequest,
    GetVersionRequest,
    ListApiKeysRequest,
    ListModelsRequest,
    ListVersionsRequest,
    ModelInfo,
    ModelPage,
    Principal,
    PruneRequest,
    PruneResult,
    RevokeApiKeyRequest,
    SetAliasRequest,
    UpdateMetadataRequest,
    UploadedVersion,
    VersionInfo,
    VersionPage,
    VersionReports,
)
from services.common.artifacts import (
    ArtifactCorruptError,
    ArtifactNotFoundError,
    ArtifactStore,
)
from services.common.bus import Bus, BusError, parse_reply
from services.common.errors import Conflict, ServiceError, ServiceUnavailable
from services.common.logging import get_logger
from services.registry import domain
from services.registry.errors import AliasInUse, ArtifactMissing, VersionNotFound
from services.registry.store import RegistryStore

__all__ = ["Registry"]

log = get_logger(__name__)

#: A version still ``uploaded`` this long after its commit had its event publish fail.
_REPUBLISH_AFTER = timedelta(seconds=10)


class Registry:
    """The registry service's behaviour, bound to a bus, a database and the artifact store."""

    def __init__(
        self,
        *,
        settings: Settings,
        bus: Bus,
        store: RegistryStore,
        artifacts: ArtifactStore,
        durable_prefix: str = "registry",
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self.artifacts = artifacts
        # Names its consumers and keys the events they have handled.
        self.durable_prefix = durable_prefix
        self._prune_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for background work (retention after uploads) to finish."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- versions -----------------------------------------------------------------

    async def create_version(self, req: CreateVersionRequest) -> UploadedVersion:
        """Record a version whose bytes the API has stored, announce it, and apply
        retention to its model; the answer names the versions retention deleted."""
        self._check_artifact(req.artifact_id, req.size_bytes)
        if req.reference_artifact_id is not None:
            self._check_artifact(req.reference_artifact_id, None)
        info = await self.store.create_version(req)
        # The orphan sweep hides an artifact before it checks that no version refers to
        # it: if it hid this one between the check above and the commit, undo the version.
        for artifact_id in (req.artifact_id, req.reference_artifact_id):
            if artifact_id is not None and not self.artifacts.exists(artifact_id):
                await self.store.delete_version(req.model, req.version)
                raise ArtifactMissing(artifact_id, "it was deleted as an orphan meanwhile")
        info = await self._announce(req.model, req.version) or info
        # Retention runs before the answer so that the uploader learns what it deleted;
        # the upload itself has succeeded whatever retention does. It may queue behind a
        # sweep's round (one lock): past a bound it goes on alone and the answer says so.
        task = self._spawn(self._prune_quietly(req.model, trigger=f"upload of {req.version}"))
        done, _ = await asyncio.wait({task}, timeout=self.settings.nats.request_timeout / 2)
        result = task.result() if done else None
        if result is None:
            skipped = (
                "retention failed; the registry's sweep tries again"
                if done
                else "retention is still running (behind the registry's sweep); "
                "eaf.model.version.deleted says what it deletes"
            )
            return UploadedVersion(**info.model_dump(), retention_skipped=skipped)
        return UploadedVersion(
            **info.model_dump(),
            pruned=tuple(v.version for v in result.deleted),
            retention_skipped=result.skipped.get(req.model, ""),
        )

    def _check_artifact(self, artifact_id: str, size: int | None) -> None:
        try:
            stored = self.artifacts.info(artifact_id)
        except ArtifactNotFoundError:
            raise ArtifactMissing(artifact_id, "it is not in the artifact store") from None
        except ArtifactCorruptError as exc:
            raise ArtifactMissing(artifact_id, exc.reason) from None
        if size is not None and stored.size != size:
            raise ArtifactMissing(
                artifact_id, f"it holds {stored.size} bytes, the request says {size}"
            )

    async def _announce(self, model: str, version: str) -> VersionInfo | None:
        """Publish ``eaf.model.uploaded`` (after the commit) and mark the version validating.

        A failed publish leaves the version ``uploaded``; the sweep publishes it again with
        the same event id, which the stream deduplicates.
        """
        event_id, info = await self.store.uploaded_event_id(model, version)
        event = ModelUploaded(
            event_id=event_id,
            occurred_at=info.uploaded_at,
            model=info.model,
            version=info.version,
            sequence=info.sequence,
            artifact_id=info.artifact_id,
            size_bytes=info.size_bytes,
            uploaded_by=info.uploaded_by,
            reference_artifact_id=info.reference_artifact_id,
        )
        try:
            await self.bus.publish(event)
        except Exception as exc:
            log.warning(
                "upload event not published yet", model=model, version=version, error=repr(exc)
            )
            return None
        await self.store.mark_validating(model, version)
        return await self.store.get_version(model, version)

    async def get_version(self, req: GetVersionRequest) -> VersionInfo:
        """A version by number or alias."""
        return await self.store.get_version(req.model, req.ref)

    async def list_versions(self, req: ListVersionsRequest) -> VersionPage:
        """A model's versions, newest first."""
        return await self.store.list_versions(req)

    async def get_model(self, req: GetModelRequest) -> ModelInfo:
        return await self.store.get_model(req.model)

    async def list_models(self, req: ListModelsRequest) -> ModelPage:
        return await self.store.list_models(req)

    async def update_metadata(self, req: UpdateMetadataRequest) -> VersionInfo:
        return await self.store.update_metadata(req)

    async def set_alias(self, req: SetAliasRequest) -> AliasInfo:
        return await self.store.set_alias(req.model, req.alias, req.version)

    async def delete_alias(self, req: DeleteAliasRequest) -> Deleted:
        version = await self.store.delete_alias(req.model, req.alias)
        self._spawn(self._prune_quietly(req.model, trigger=f"removal of alias {req.alias}"))
        return Deleted(model=req.model, alias=req.alias, version=version)

    async def get_reports(self, req: GetReportsRequest) -> VersionReports:
        return await self.store.get_reports(req.model, req.ref)

    async def delete_version(self, req: DeleteVersionRequest) -> Deleted:
        """Delete a version on request; refused while devices use it or an alias names it."""
        await self.store.get_version(req.model, req.version)  # 404 before asking the deployer
        in_use = await self.versions_in_use(req.model)
        if in_use is None:
            raise ServiceUnavailable(
                "the deployer did not answer, so it is unknown whether a device uses this "
                "version; try again later"
            )
        if req.version in in_use:
            raise Conflict(
                f"version {req.version} of {req.model!r} is in use on devices "
                "(active, rollback target or being deployed); deploy another version first"
            )
        return await self._delete(req.model, req.version, reason="user", deleted_by=req.deleted_by)

    async def _delete(
        self,
        model: str,
        version: str,
        *,
        reason: Literal["user", "retention"],
        deleted_by: str = "",
        detail: str = "",
    ) -> Deleted:
        info, orphan = await self.store.delete_version(model, version)
        if orphan:
            self.artifacts.delete(info.artifact_id)
        await self.bus.publish(
            ModelVersionDeleted(
                model=model,
                version=version,
                artifact_id=info.artifact_id,
                reason=reason,
                deleted_by=deleted_by,
                detail=detail,
            )
        )
        log.info("version deleted", model=model, version=version, reason=reason)
        return Deleted(model=model, version=version, artifact_deleted=orphan)

    # ---- retention ----------------------------------------------------------------

    async def versions_in_use(self, model: str | None) -> set[str] | None:
        """Versions of ``model`` the deployer says devices need; None when unknown.

        "No responders" means no deployer is deployed, so nothing can be in use: empty.
        A timeout or an error means the answer is unknown, and callers must not delete.
        """
        rpc = DeployerRpc.VERSIONS_IN_USE
        subject = rpc.subject
        payload = rpc.request(model=model).model_dump_json().encode()
        try:
            # A quarter of the request timeout: a prune request (which may wait behind one
            # background round) then still answers its caller in time.
            msg = await self.bus.broker.connection.request(
                subject, payload, timeout=self.settings.nats.request_timeout / 4
            )
        except nats.errors.NoRespondersError:
            return set()
        except Exception as exc:  # timeout, connection lost
            log.warning("deployer did not answer versions_in_use", error=repr(exc))
            return None
        try:
            reply = parse_reply(subject, msg.data, rpc.reply)
        except (BusError, ServiceError) as exc:
            log.warning("deployer answered versions_in_use with an error", error=str(exc))
            return None
        return {v.version for v in reply.versions if model is None or v.model == model}

    async def prune(self, req: PruneRequest) -> PruneResult:
        """Apply retention to one model or all: delete the oldest unprotected versions."""
        models = [req.model] if req.model else await self.store.model_names()
        return await self._prune(models, trigger="a prune request")

    async def _prune(self, models: list[str], *, trigger: str) -> PruneResult:
        """Retention for ``models``; ``trigger`` (what asked for it) goes into the events."""
        deleted: list[VersionInfo] = []
        skipped: dict[str, str] = {}
        keep = self.settings.model_repository.max_versions_per_model
        async with self._prune_lock:
            for model in models:
                candidates, aliased = await self.store.retention_view(model)
                if len(candidates) <= keep:
                    continue
                in_use = await self.versions_in_use(model)
                if in_use is None:
                    skipped[model] = "the deployer did not answer; nothing pruned blind"
                    continue
                detail = (
                    f"{trigger}: {len(candidates)} versions, max_versions_per_model is {keep}; "
                    "the oldest not aliased nor in use on a device go first"
                )
                for version in domain.select_prunable(
                    candidates, keep=keep, protected=aliased | in_use
                ):
                    try:
                        info = await self.store.get_version(model, version)
                        await self._delete(model, version, reason="retention", detail=detail)
                    except (AliasInUse, VersionNotFound):
                        continue  # aliased or deleted since we looked: leave it
                    deleted.append(info)
        return PruneResult(deleted=tuple(deleted), skipped=skipped)

    async def _prune_quietly(self, model: str, *, trigger: str) -> PruneResult | None:
        """Retention for one model in the background: a failure is logged (None)."""
        try:
            return await self._prune([model], trigger=trigger)
        except Exception:
            log.exception("retention failed", model=model, trigger=trigger)
            return None

    async def sweep_forever(self, interval: float) -> None:
        """Periodically re-publish unannounced uploads and apply retention to every model
        (a version stops being in use without any event the registry would see)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("registry sweep failed")

    async def sweep(self) -> None:
        cutoff = datetime.now(UTC) - _REPUBLISH_AFTER
        for model, version in await self.store.unpublished(cutoff):
            await self._announce(model, version)
        await self._prune(await self.store.model_names(), trigger="the registry's sweep")
        await self.collect_orphans()

    async def collect_orphans(self) -> list[str]:
        """Delete artifacts older than ``orphan_grace_hours`` that no version refers to.

        Each goes in two steps: moved out of sight, then deleted only if still no version
        refers to it (``create_version`` checks again after its commit), so an artifact
        being registered at that moment is put back, never lost.
        """
        store = self.artifacts
        grace = self.settings.model_repository.orphan_grace_hours * 3600
        cutoff = time.time() - grace
        await asyncio.to_thread(store.put_back_all)  # left aside by a crash mid-delete
        deleted: list[str] = []
        known = await self.store.referenced_ids()  # one query, not one per artifact
        for artifact_id in await asyncio.to_thread(store.older_than, cutoff):
            if artifact_id in known:
                continue
            aside = store.set_aside(artifact_id)
            if aside is None:
                continue
            if await self.store.referenced(artifact_id):
                store.put_back(artifact_id, aside)
                continue
            aside.unlink()
            deleted.append(artifact_id)
            log.info("orphan artifact deleted", artifact_id=artifact_id)
        temp = await asyncio.to_thread(store.remove_stale_temp, cutoff)
        if temp:
            log.info("stale upload temp files deleted", count=temp)
        return deleted

    # ---- events from the validator and analyzer -----------------------------------

    async def on_validated(self, e: ModelValidated) -> None:
        """Store the validation report; the version becomes ``validated``."""
        await self._report(
            e.event_id,
            "validated",
            e.model,
            e.version,
            e.artifact_id,
            e.report.model_dump(mode="json"),
        )

    async def on_rejected(self, e: ModelRejected) -> None:
        """Store the validation report and reason; the version becomes ``rejected``."""
        await self._report(
            e.event_id,
            "rejected",
            e.model,
            e.version,
            e.artifact_id,
            e.report.model_dump(mode="json"),
            reason=e.reason,
        )

    async def on_analyzed(self, e: ModelAnalyzed) -> None:
        """Store the analysis report; the version becomes ``analyzed``."""
        await self._report(
            e.event_id,
            "analyzed",
            e.model,
            e.version,
            e.artifact_id,
            e.report.model_dump(mode="json"),
        )

    async def _report(
        self,
        event_id: Any,
        kind: domain.EventKind,
        model: str,
        version: str,
        artifact_id: str,
        report: dict[str, Any],
        *,
        reason: str = "",
    ) -> None:
        result = await self.store.apply_report(
            consumer=f"{self.durable_prefix}-{kind}",
            event_id=event_id,
            model=model,
            version=version,
            artifact_id=artifact_id,
            kind=kind,
            report=report,
            reason=reason,
        )
        if result is None:
            log.info(
                "report ignored (duplicate, or no such version)",
                model=model,
                version=version,
                kind=kind,
            )
        else:
            log.info("report stored", model=model, version=version, status=result.info.status)
            if result.dropped_aliases:
                # Set while the version was validating; eaf.model.rejected is the event.
                log.warning(
                    "aliases of a rejected version removed",
                    model=model,
                    version=version,
                    aliases=list(result.dropped_aliases),
                )

    # ---- API keys -----------------------------------------------------------------

    async def authenticate(self, req: AuthenticateRequest) -> Principal:
        """Who a bearer token belongs to; ``unauthorized`` (401) if nobody."""
        return await self.store.authenticate(
            req.token, unexpiring_max_age_days=self.settings.api.unexpiring_key_max_age_days
        )

    async def create_api_key(self, req: CreateApiKeyRequest) -> ApiKeyCreated:
        lifetime = req.lifetime_days
        return await self.store.create_api_key(
            name=req.name,
            role=req.role,
            created_by=req.created_by,
            lifetime_days=self.settings.api.key_lifetime_days if lifetime is None else lifetime,
        )

    async def list_api_keys(self, req: ListApiKeysRequest) -> ApiKeyList:
        return ApiKeyList(items=tuple(await self.store.list_api_keys(req.include_revoked)))

    async def revoke_api_key(self, req: RevokeApiKeyRequest) -> ApiKeyInfo:
        return await self.store.revoke_api_key(req.key_id)

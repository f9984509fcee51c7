"""The registry on real NATS, with SQLite and with PostgreSQL: versions, sequence numbers,
events, reports and retention (with a stand-in deployer answering on the real bus)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from schemas.config import Settings
from schemas.deployer import DeployerRpc
from schemas.events import ModelAnalyzed, ModelRejected, ModelValidated
from schemas.registry import (
    CreateVersionRequest,
    DeleteVersionRequest,
    GetReportsRequest,
    GetVersionRequest,
    ListVersionsRequest,
    PruneRequest,
    PruneResult,
    RegistryRpc,
    SetAliasRequest,
    VersionInfo,
    VersionInUse,
    VersionMetadata,
    VersionsInUseReply,
    VersionsInUseRequest,
    VersionStatus,
)
from schemas.reports import AnalysisReport, CheckOutcome, CheckResult, ValidationReport
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.common.errors import BadRequest, Conflict, NotFound
from services.registry.app import create_service as create_registry
from tests.support.settings import platform_settings

S = RegistryRpc

#: The smallest report the analyzer's schema accepts; the registry stores it as it comes.
ANALYSIS = AnalysisReport.model_validate(
    {
        "ir_version": 8,
        "opset_imports": {"ai.onnx": 17},
        "node_count": 1,
        "operators": {"ai.onnx::Relu": {"count": 1}},
        "parameters": [],
        "parameter_count": 0,
        "parameter_bytes": 0,
        "macs": 0,
        "flops": 0,
        "nodes": [],
        "inputs": [],
        "outputs": [],
        "quantization": {"scheme": "none"},
        "peak_activation_bytes": 0,
        "requirements": {
            "opsets": {"ai.onnx": 17},
            "operators": ["ai.onnx::Relu"],
            "ir_version": 8,
        },
    }
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


def settings_for(tmp_path: Path, nats_url: str, database_url: str, **kw: Any) -> Settings:
    return platform_settings(
        tmp_path,
        nats_url=nats_url,
        database_url=database_url,
        model_repository={"max_versions_per_model": 3},
        **kw,
    )


class Harness:
    def __init__(self, settings: Settings, bus: Bus, store: ArtifactStore) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store

    async def put(self, data: bytes) -> str:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return (await self.store.put(one())).info.artifact_id

    async def create(self, model: str, version: str, data: bytes | None = None) -> VersionInfo:
        data = data if data is not None else os.urandom(100)
        aid = await self.put(data)
        req = CreateVersionRequest(
            model=model,
            version=version,
            artifact_id=aid,
            size_bytes=len(data),
            metadata=VersionMetadata(task="t", tags=("x",)),
            uploaded_by="tester",
        )
        return await self.bus.call(S.CREATE_VERSION, req)

    async def versions(self, model: str) -> list[str]:
        page = await self.bus.call(S.LIST_VERSIONS, ListVersionsRequest(model=model))
        return sorted(v.version for v in page.items)

    async def prune(self, model: str) -> PruneResult:
        return await self.bus.call(S.PRUNE, PruneRequest(model=model))


@pytest.fixture
async def harness(tmp_path: Path, nats_server: Any, database_url: str) -> AsyncIterator[Harness]:
    settings = settings_for(tmp_path, nats_server.url, database_url)
    store = ArtifactStore(
        root=settings.model_repository.storage_path,
        kek=os.urandom(32),
        chunk_size=settings.deployment.chunk_size,
    )
    async with create_registry(settings), Bus(settings.nats, service="test-client") as bus:
        yield Harness(settings, bus, store)


async def test_versions_get_growing_sequence_numbers_never_reused(
    harness: Harness, unique_id: Any
) -> None:
    model = unique_id("m")
    a = await harness.create(model, "1.0.0")
    b = await harness.create(model, "1.1.0")
    assert (a.sequence, b.sequence) == (1, 2)
    await harness.bus.call(S.DELETE_VERSION, DeleteVersionRequest(model=model, version="1.1.0"))
    c = await harness.create(model, "1.1.0")  # the same number again gets a new sequence
    assert c.sequence == 3


async def test_concurrent_uploads_get_distinct_numbers_and_one_duplicate_wins(
    harness: Harness, unique_id: Any
) -> None:
    model = unique_id("m")
    results = await asyncio.gather(
        *(harness.create(model, f"1.0.{i}") for i in range(3)),
        *(harness.create(model, "2.0.0", os.urandom(50)) for _ in range(3)),
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, VersionInfo)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(ok) == 4 and len(conflicts) == 2, results
    assert sorted(r.sequence for r in ok) == [1, 2, 3, 4]


async def test_unknown_artifact_and_bad_version_are_refused(
    harness: Harness, unique_id: Any
) -> None:
    req = CreateVersionRequest(
        model=unique_id("m"), version="1.0.0", artifact_id="ab" * 32, size_bytes=5
    )
    with pytest.raises(BadRequest, match="not in the artifact store"):
        await harness.bus.call(S.CREATE_VERSION, req)
    bad = req.model_dump() | {"version": "1.0"}
    raw = await harness.bus.broker.request(
        json.dumps(bad).encode(), subject=S.CREATE_VERSION.subject, timeout=5
    )
    assert b'"status":422' in raw.body and b"semantic version" in raw.body
    with pytest.raises(NotFound):
        await harness.bus.call(S.GET_VERSION, GetVersionRequest(model=unique_id("m"), ref="1.0.0"))


async def test_uploaded_event_follows_the_commit(harness: Harness, unique_id: Any) -> None:
    model = unique_id("m")
    got: asyncio.Queue[bytes] = asyncio.Queue()
    nc = harness.bus.broker.connection

    async def on_msg(msg: Any) -> None:
        await got.put(msg.data)

    sub = await nc.subscribe("eaf.model.uploaded", cb=on_msg)
    try:
        info = await harness.create(model, "1.0.0")
        async with asyncio.timeout(10):
            while True:
                data = await got.get()
                if model.encode() in data:
                    break
    finally:
        await sub.unsubscribe()
    assert info.artifact_id.encode() in data
    assert info.status is VersionStatus.VALIDATING


async def wait_status(h: Harness, model: str, version: str, status: VersionStatus) -> None:
    async with asyncio.timeout(15):
        while True:
            info = await h.bus.call(S.GET_VERSION, GetVersionRequest(model=model, ref=version))
            if info.status is status:
                return
            await asyncio.sleep(0.05)


async def test_reports_arrive_by_events_idempotently_and_in_any_order(
    harness: Harness, unique_id: Any
) -> None:
    model = unique_id("m")
    good = await harness.create(model, "1.0.0")
    bad = await harness.create(model, "1.1.0")
    report = ValidationReport(
        checks=(CheckResult(name="onnx.checker", outcome=CheckOutcome.PASSED),)
    )
    analyzed = ModelAnalyzed.model_validate(
        {
            "model": model,
            "version": "1.0.0",
            "artifact_id": good.artifact_id,
            "report": ANALYSIS,
        }
    )
    validated = ModelValidated(
        model=model, version="1.0.0", artifact_id=good.artifact_id, report=report
    )
    await harness.bus.publish(analyzed)
    await wait_status(harness, model, "1.0.0", VersionStatus.ANALYZED)
    # A late (or redelivered) validation never moves an analyzed version back.
    await harness.bus.publish(validated)
    await harness.bus.publish(analyzed.model_copy(update={"event_id": uuid.uuid4()}))
    failed = ValidationReport(
        checks=(CheckResult(name="opset", outcome=CheckOutcome.FAILED, message="opset 3"),)
    )
    await harness.bus.publish(
        ModelRejected(
            model=model, version="1.1.0", artifact_id=bad.artifact_id, report=failed, reason="opset"
        )
    )
    await wait_status(harness, model, "1.1.0", VersionStatus.REJECTED)
    reports = await harness.bus.call(S.GET_REPORTS, GetReportsRequest(model=model, ref="1.0.0"))
    assert reports.status is VersionStatus.ANALYZED
    assert reports.validation is not None
    assert reports.validation["checks"][0]["name"] == "onnx.checker"
    assert reports.analysis is not None
    rejected = await harness.bus.call(S.GET_REPORTS, GetReportsRequest(model=model, ref="1.1.0"))
    assert rejected.rejection_reason == "opset"
    assert rejected.validation is not None
    assert rejected.validation["checks"][0]["outcome"] == "failed"


async def test_retention_prunes_oldest_unprotected_never_aliased(
    harness: Harness, unique_id: Any
) -> None:
    model = unique_id("m")
    for v in ("1.0.0", "1.1.0"):
        await harness.create(model, v)
    await harness.bus.call(
        S.SET_ALIAS, SetAliasRequest(model=model, alias="production", version="1.0.0")
    )
    for v in ("1.2.0", "1.3.0", "1.4.0"):
        await harness.create(model, v)
    await harness.prune(model)  # after the background rounds, nothing more to do
    assert await harness.versions(model) == ["1.0.0", "1.3.0", "1.4.0"]


async def test_retention_keeps_versions_in_use_and_never_prunes_blind(
    harness: Harness, unique_id: Any
) -> None:
    model = unique_id("m")
    mode = {"answer": "in_use"}
    deployer = Bus(harness.settings.nats, service="deployer-standin")

    async def in_use(req: VersionsInUseRequest) -> VersionsInUseReply:
        if mode["answer"] == "slow":
            await asyncio.sleep(harness.settings.nats.request_timeout / 4 + 0.5)
        return VersionsInUseReply(
            versions=(VersionInUse(model=model, version="1.0.0", reason="rollback_target"),)
        )

    deployer.serve(DeployerRpc.VERSIONS_IN_USE, in_use)
    async with deployer:
        for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
            await harness.create(model, v)
        result = await harness.prune(model)
        assert await harness.versions(model) == ["1.0.0", "1.2.0", "1.3.0"]
        assert result.skipped == {}
        # Deleting by hand what a device uses is refused too.
        with pytest.raises(Conflict, match="in use"):
            await harness.bus.call(
                S.DELETE_VERSION, DeleteVersionRequest(model=model, version="1.0.0")
            )
        # A deployer that does not answer in time: nothing is deleted.
        mode["answer"] = "slow"
        await harness.create(model, "1.4.0")
        result = await harness.prune(model)
        assert model in result.skipped
        assert await harness.versions(model) == ["1.0.0", "1.2.0", "1.3.0", "1.4.0"]


async def test_orphan_artifacts_and_stale_temp_files_are_collected_after_the_grace(
    tmp_path: Path, nats_server: Any, database_url: str, unique_id: Any
) -> None:
    settings = settings_for(tmp_path, nats_server.url, database_url)
    store = ArtifactStore(
        root=settings.model_repository.storage_path, kek=os.urandom(32), chunk_size=1024
    )
    two_days_ago = time.time() - 2 * 86400
    async with create_registry(settings) as registry, Bus(settings.nats, service="t") as bus:
        h = Harness(settings, bus, store)
        model = unique_id("m")
        kept = (await h.create(model, "1.0.0")).artifact_id  # a version refers to it
        old_orphan = await h.put(os.urandom(300))  # uploaded, never registered
        new_orphan = await h.put(os.urandom(300))  # same, but within the grace period
        stale_temp = store.root / "tmp" / "123-crashed-upload"
        fresh_temp = store.root / "tmp" / "456-upload-in-progress"
        for path in (stale_temp, fresh_temp):
            path.write_bytes(b"partial")
        for path in (store.path(kept), store.path(old_orphan), stale_temp):
            os.utime(path, (two_days_ago, two_days_ago))

        assert await registry.collect_orphans() == [old_orphan]
        assert not store.exists(old_orphan)
        assert store.exists(kept) and store.exists(new_orphan)
        assert not stale_temp.exists() and fresh_temp.exists()
        # The version still reads its artifact.
        info = await bus.call(S.GET_VERSION, GetVersionRequest(model=model, ref="1.0.0"))
        assert info.artifact_id == kept

        # A crash between hiding an artifact and deleting it: the next round puts it back.
        aside = store.set_aside(new_orphan)
        assert aside is not None and not store.exists(new_orphan)
        assert await registry.collect_orphans() == []
        assert store.exists(new_orphan)


async def test_registration_racing_the_orphan_sweep_never_refers_to_a_deleted_artifact(
    tmp_path: Path, nats_server: Any, database_url: str, unique_id: Any
) -> None:
    settings = settings_for(tmp_path, nats_server.url, database_url)
    store = ArtifactStore(
        root=settings.model_repository.storage_path, kek=os.urandom(32), chunk_size=1024
    )
    async with create_registry(settings) as registry, Bus(settings.nats, service="t") as bus:
        h = Harness(settings, bus, store)
        model = unique_id("m")
        data = os.urandom(200)
        aid = await h.put(data)
        original = registry.store.create_version

        async def swept_meanwhile(req: CreateVersionRequest) -> VersionInfo:
            # The sweep hides the artifact after the registry checked it, before the commit.
            assert store.set_aside(aid) is not None
            return await original(req)

        registry.store.create_version = swept_meanwhile  # type: ignore[method-assign]
        with pytest.raises(BadRequest, match="orphan"):
            await h.create(model, "1.0.0", data)
        assert await h.versions(model) == []


async def _reject(h: Harness, info: VersionInfo, reason: str) -> None:
    failed = ValidationReport(
        checks=(CheckResult(name="opset", outcome=CheckOutcome.FAILED, message=reason),)
    )
    await h.bus.publish(
        ModelRejected(
            model=info.model,
            version=info.version,
            artifact_id=info.artifact_id,
            report=failed,
            reason=f"opset: {reason}",
        )
    )
    await wait_status(h, info.model, info.version, VersionStatus.REJECTED)


async def test_an_alias_cannot_name_a_rejected_version(harness: Harness, unique_id: Any) -> None:
    model = unique_id("m")
    good = await harness.create(model, "1.0.0")
    bad = await harness.create(model, "1.0.1")
    await harness.bus.call(
        S.SET_ALIAS, SetAliasRequest(model=model, alias="production", version="1.0.0")
    )
    await _reject(harness, bad, "opset 99 is newer than the runtime's 21")
    with pytest.raises(Conflict, match=r"rejected: opset: opset 99 is newer") as refused:
        await harness.bus.call(
            S.SET_ALIAS,
            SetAliasRequest(model=model, alias="production", version="1.0.1"),
        )
    assert "1.0.1" in str(refused.value) and "production" in str(refused.value)
    # Nothing moved: the alias still names the good version.
    current = await harness.bus.call(
        S.GET_VERSION, GetVersionRequest(model=model, ref="production")
    )
    assert current.version == good.version


async def test_an_alias_set_while_validating_goes_when_the_version_is_rejected(
    harness: Harness, unique_id: Any
) -> None:
    model = unique_id("m")
    await harness.create(model, "1.0.0")
    pending = await harness.create(model, "1.1.0")
    for alias in ("candidate", "staging"):
        await harness.bus.call(
            S.SET_ALIAS, SetAliasRequest(model=model, alias=alias, version="1.1.0")
        )
    await harness.bus.call(
        S.SET_ALIAS, SetAliasRequest(model=model, alias="production", version="1.0.0")
    )
    await _reject(harness, pending, "bad")
    for alias in ("candidate", "staging"):
        with pytest.raises(NotFound):
            await harness.bus.call(S.GET_VERSION, GetVersionRequest(model=model, ref=alias))
    # Other versions' aliases stay.
    kept = await harness.bus.call(S.GET_VERSION, GetVersionRequest(model=model, ref="production"))
    assert kept.version == "1.0.0"
    rejected = await harness.bus.call(S.GET_VERSION, GetVersionRequest(model=model, ref="1.1.0"))
    assert rejected.aliases == ()

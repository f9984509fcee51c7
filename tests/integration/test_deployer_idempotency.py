"""Idempotency keys (``request_id``) of create-deployment and rollback, on real NATS and
Mosquitto, on SQLite and on PostgreSQL: a retried request never starts a second
deployment, a key reused for another request is refused, concurrent retries make one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, update
from sqlalchemy.ext.asyncio import create_async_engine

from schemas.deployer import (
    CreateDeployment,
    DeployerRpc,
    DeploymentInfo,
    KeyedDeploymentInfo,
    ListDeployments,
    RollbackRequest,
    TargetSelector,
)
from schemas.events import DeploymentOutcome
from services.common.errors import Conflict
from services.deployer.store import Base, DeviceRemoval, RequestKey
from tests.support.deploy import bias_model, put
from tests.support.deployer_env import Env, EnvFactory, devices, fleet


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def env(database_url: str | None, make_env: EnvFactory) -> Env:
    # The database before the deployer: it is dropped only after the deployer has stopped.
    return await make_env(database_url=database_url)


async def create(env: Env, req: CreateDeployment) -> KeyedDeploymentInfo:
    return await env.bus.call(DeployerRpc.CREATE_DEPLOYMENT, req)


async def deployments_of(env: Env, model: str) -> list[DeploymentInfo]:
    found = await env.bus.call(DeployerRpc.LIST_DEPLOYMENTS, ListDeployments(model=model))
    return list(found.deployments)


async def one_device_model(env: Env, unique_id) -> tuple[str, str]:
    (device,) = await fleet(env, unique_id("idem-"), 1)
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", await put(env.store, bias_model(0.4)))
    return device.device_id, model


async def test_the_same_request_twice_makes_one_deployment(env: Env, unique_id) -> None:
    device_id, model = await one_device_model(env, unique_id)
    req = CreateDeployment(
        model=model, version="1.0.0", target=TargetSelector(device_id=device_id),
        request_id=unique_id("release:"), created_by="ci",
    )  # fmt: skip
    first = await create(env, req)
    again = await create(env, req)
    assert isinstance(first, KeyedDeploymentInfo) and isinstance(again, KeyedDeploymentInfo)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.deployment_id == first.deployment_id
    assert again.plain().model_dump(exclude={"targets", "counts", "updated_at"}) == (
        first.plain().model_dump(exclude={"targets", "counts", "updated_at"})
    )
    assert [d.deployment_id for d in await deployments_of(env, model)] == [first.deployment_id]


async def test_the_same_key_with_another_request_is_refused(env: Env, unique_id) -> None:
    device_id, model = await one_device_model(env, unique_id)
    key = unique_id("k-")
    req = CreateDeployment(
        model=model, version="1.0.0", target=TargetSelector(device_id=device_id), request_id=key
    )
    first = await create(env, req)
    for other in (
        req.model_copy(update={"auto_rollback": True}),
        req.model_copy(update={"created_by": "someone-else"}),
    ):
        with pytest.raises(Conflict, match="already used .* different fields"):
            await create(env, other)
    with pytest.raises(Conflict, match="already used"):
        await env.bus.call(
            DeployerRpc.ROLLBACK, RollbackRequest(deployment_id=first.deployment_id, request_id=key)
        )
    assert [d.deployment_id for d in await deployments_of(env, model)] == [first.deployment_id]


async def test_concurrent_retries_make_one_deployment(env: Env, unique_id) -> None:
    device_id, model = await one_device_model(env, unique_id)
    req = CreateDeployment(
        model=model, version="1.0.0", target=TargetSelector(device_id=device_id),
        request_id=unique_id("k-"),
    )  # fmt: skip
    replies = await asyncio.gather(*(create(env, req) for _ in range(3)))
    # Straight to the deployer too (as several instances would): every attempt passes the
    # first look-up before any has written, so the key's primary key decides.
    other = req.model_copy(update={"request_id": unique_id("k-")})
    direct = await asyncio.gather(*(env.app.deployer.create_deployment(other) for _ in range(6)))
    for group in (replies, direct):
        assert len({r.deployment_id for r in group}) == 1
        assert sorted(isinstance(r, KeyedDeploymentInfo) and r.replayed for r in group) == (
            [False] + [True] * (len(group) - 1)
        )
    assert len(await deployments_of(env, model)) == 2


async def test_without_a_key_every_request_starts_a_deployment(env: Env, unique_id) -> None:
    device_id, model = await one_device_model(env, unique_id)
    req = CreateDeployment(model=model, version="1.0.0", target=TargetSelector(device_id=device_id))
    first = await create(env, req)
    second = await create(env, req)
    # One reply type per subject: without a key nothing is ever a replay.
    assert not first.replayed and not second.replayed
    assert first.deployment_id != second.deployment_id
    assert len(await deployments_of(env, model)) == 2


async def test_a_failed_request_records_no_key(env: Env, unique_id) -> None:
    device_id, model = await one_device_model(env, unique_id)
    key = unique_id("k-")
    missing = CreateDeployment(
        model=model, version="1.0.0", target=TargetSelector(group=unique_id("nobody-")),
        request_id=key,
    )  # fmt: skip
    with pytest.raises(Exception, match="no enrolled device"):
        await create(env, missing)
    # The key is free: a corrected request under it runs.
    fixed = missing.model_copy(update={"target": TargetSelector(device_id=device_id)})
    made = await create(env, fixed)
    assert isinstance(made, KeyedDeploymentInfo) and not made.replayed


async def test_a_key_is_forgotten_after_a_day(env: Env, unique_id) -> None:
    device_id, model = await one_device_model(env, unique_id)
    key = unique_id("k-")
    req = CreateDeployment(
        model=model, version="1.0.0", target=TargetSelector(device_id=device_id), request_id=key
    )
    first = await create(env, req)
    async with env.app.deployer.sessions.begin() as s:
        await s.execute(
            update(RequestKey)
            .where(RequestKey.request_id == key)
            .values(created_at=datetime.now(UTC) - timedelta(hours=25))
        )
    later = await create(env, req)
    assert isinstance(later, KeyedDeploymentInfo) and not later.replayed
    assert later.deployment_id != first.deployment_id
    # ... and the key now names the new deployment.
    again = await create(env, req)
    assert isinstance(again, KeyedDeploymentInfo) and again.replayed
    assert again.deployment_id == later.deployment_id


async def test_a_retried_rollback_makes_one_rollback(env: Env, unique_id) -> None:
    group = unique_id("rb-")
    runtimes = await fleet(env, group, 1)
    model = unique_id("m-")
    env.catalog.add(model, "1.0.0", await put(env.store, bias_model(0.1)))
    env.catalog.add(model, "2.0.0", await put(env.store, bias_model(0.2)))
    async with devices(runtimes):
        for version in ("1.0.0", "2.0.0"):
            made = await create(
                env,
                CreateDeployment(model=model, version=version, target=TargetSelector(group=group)),
            )
            done = await env.wait_completed(made.deployment_id)
            assert done.outcome is DeploymentOutcome.SUCCEEDED
        req = RollbackRequest(deployment_id=made.deployment_id, request_id=unique_id("rb:"))
        replies = await asyncio.gather(
            *(env.app.deployer.rollback(req.deployment_id, req.request_id) for _ in range(3))
        )
        later = await env.bus.call(DeployerRpc.ROLLBACK, req)
        await env.wait_completed(replies[0].deployment_id)
    assert len({r.deployment_id for r in (*replies, later)}) == 1
    assert sorted(isinstance(r, KeyedDeploymentInfo) and r.replayed for r in replies) == [
        False,
        True,
        True,
    ]
    assert later.replayed and later.kind == "rollback"
    rollbacks = [d for d in await deployments_of(env, model) if d.kind == "rollback"]
    assert [d.deployment_id for d in rollbacks] == [later.deployment_id]


async def test_a_database_of_an_earlier_version_gains_the_key_table(
    make_env: EnvFactory,
    tmp_path: Path,
    unique_id,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    engine = create_async_engine(url)
    added = {RequestKey.__tablename__, DeviceRemoval.__tablename__}  # both came later
    older = [t for t in Base.metadata.sorted_tables if t.name not in added]
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: Base.metadata.create_all(c, tables=older))
    env = await make_env(database_url=url)
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: inspect(c).get_table_names())
    await engine.dispose()
    assert added <= set(names)
    device_id, model = await one_device_model(env, unique_id)
    req = CreateDeployment(
        model=model, version="1.0.0", target=TargetSelector(device_id=device_id),
        request_id=unique_id("k-"),
    )  # fmt: skip
    assert (await create(env, req)).deployment_id == (await create(env, req)).deployment_id


async def test_a_key_older_than_its_lifetime_is_forgotten(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy.ext.asyncio import async_sessionmaker

    from services.deployer import idempotency

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    now = datetime.now(UTC)
    async with sessions.begin() as s:
        for request_id, age in (("recent", timedelta(hours=1)), ("old", timedelta(hours=25))):
            s.add(RequestKey(request_id=request_id, operation="create", fingerprint="f",
                             deployment_id=f"d-{request_id}", created_at=now - age))  # fmt: skip
    assert idempotency.REQUEST_KEY_TTL == timedelta(hours=24)
    found = [
        await idempotency._find(sessions, idempotency.Key(r, "create", "f"))
        for r in ("recent", "old")
    ]
    await engine.dispose()
    assert found == ["d-recent", None]

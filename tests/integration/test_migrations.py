"""Schema migrations on SQLite and a real PostgreSQL: the migrations build what the models
describe, adopt a database made before migrations existed without losing a row, and
replicas that start together upgrade once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.analyzer.store import AnalyzerBase
from services.common.db import CommonBase
from services.common.migrate import missing_from_migrations, upgrade
from services.deployer.store import Base as DeployerBase
from services.registry.tables import RegistryBase
from services.tracker.store import TrackerBase

#: Every package that owns tables, with its models.
OWNERS: dict[str, MetaData] = {
    "services.common": CommonBase.metadata,
    "services.registry": RegistryBase.metadata,
    "services.deployer": DeployerBase.metadata,
    "services.tracker": TrackerBase.metadata,
    "services.analyzer": AnalyzerBase.metadata,
}


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'eaf.db'}"
    else:
        plain: str = request.getfixturevalue("postgres_url")
        url = plain.replace("postgresql://", "postgresql+asyncpg://", 1)
    made = create_async_engine(url)
    try:
        yield made
    finally:
        await made.dispose()


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_the_migrations_build_what_the_models_describe(engine: AsyncEngine) -> None:
    await upgrade(engine, *OWNERS)
    for package in OWNERS:
        assert await missing_from_migrations(engine, package) == "", package
    expected = {name for md in OWNERS.values() for name in md.tables}
    versions = {"alembic_version_" + p.rsplit(".", 1)[-1] for p in OWNERS}
    assert await _tables(engine) == expected | versions


def test_a_model_change_without_a_migration_is_reported() -> None:
    # The check a developer (and this suite) runs: a column that only the model has.
    script = (
        "import sys; from sqlalchemy import Column, String\n"
        "from services.tracker.store import PublishedRegression\n"
        "PublishedRegression.__table__.append_column(Column('note', String(40)))\n"
        "from services.common.migrate import main\n"
        "sys.argv = ['migrate', 'check', 'services.tracker']; main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "add_column" in done.stdout and "'note'" in done.stdout


async def test_a_database_made_before_migrations_keeps_its_rows(engine: AsyncEngine) -> None:
    # What every release before migrations did: create_all, no version tables.
    async with engine.begin() as conn:
        for md in OWNERS.values():
            await conn.run_sync(md.create_all)
        now = datetime.now(UTC)
        await conn.execute(
            text(
                "INSERT INTO registry_models (name, created_at, updated_at, last_sequence) "
                "VALUES ('kept', :now, :now, 3)"
            ),
            {"now": now},
        )
        await conn.execute(
            text(
                "INSERT INTO deployer_devices (device_id, labels, public_key, capabilities, "
                "mqtt_username, online, enrolled_at) "
                "VALUES ('dev-1', '{}', 'k', '{}', 'dev-1', false, :now)"
            ),
            {"now": now},
        )
    await upgrade(engine, *OWNERS)
    await upgrade(engine, *OWNERS)  # a restart: nothing to do
    async with engine.connect() as conn:
        model = (await conn.execute(text("SELECT name, last_sequence FROM registry_models"))).all()
        device = (await conn.execute(text("SELECT device_id FROM deployer_devices"))).all()
        heads = (await conn.execute(text("SELECT version_num FROM alembic_version_registry"))).all()
    assert [tuple(r) for r in model] == [("kept", 3)]
    assert [tuple(r) for r in device] == [("dev-1",)]
    assert [r[0] for r in heads] == ["registry_0002"]
    for package in OWNERS:
        assert await missing_from_migrations(engine, package) == "", package


async def test_a_database_missing_later_tables_gains_them(engine: AsyncEngine) -> None:
    # A deployer database of an early release: two of today's tables came later.
    later = {"deployer_request_keys", "deployer_device_removals"}
    older = [t for t in DeployerBase.metadata.sorted_tables if t.name not in later]
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: DeployerBase.metadata.create_all(c, tables=older))
    await upgrade(engine, "services.deployer")
    assert later <= await _tables(engine)
    assert await missing_from_migrations(engine, "services.deployer") == ""


async def test_replicas_starting_together_upgrade_once(engine: AsyncEngine) -> None:
    others = [create_async_engine(engine.url) for _ in range(3)]
    try:
        await asyncio.gather(*(upgrade(e, *OWNERS) for e in (engine, *others)))
    finally:
        for other in others:
            await other.dispose()
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT version_num FROM alembic_version_deployer"))).all()
    assert [r[0] for r in rows] == ["deployer_0001"]

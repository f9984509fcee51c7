"""Schema migrations on SQLite and a real PostgreSQL: the migrations build what the models
describe, adopt a database made before migrations existed without losing a row, upgrade a
database of an earlier revision with its rows, and replicas that start together upgrade
once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, MetaData, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from schemas.reports import AnalysisReport
from services.analyzer.domain import analyze, previous_analysis
from services.analyzer.store import AnalyzerBase, analyses_of, save_analysis
from services.common.db import CommonBase
from services.common.migrate import missing_from_migrations, upgrade
from services.deployer.store import Base as DeployerBase
from services.registry.tables import RegistryBase
from services.tracker.store import TrackerBase
from tests.support.models import tiny_model

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


async def _upgrade_to(engine: AsyncEngine, package: str, revision: str) -> None:
    """Bring ``package``'s tables to ``revision`` of its history, as a release that ended
    there left them."""

    def run(conn: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", f"{package}:migrations")
        cfg.attributes.update(
            connection=conn, version_table="alembic_version_" + package.rsplit(".", 1)[-1]
        )
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


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
    # What every release before migrations did: the tables as the first revision of each
    # package describes them (today's models may have more), and no version tables.
    for package in OWNERS:
        await _upgrade_to(engine, package, package.rsplit(".", 1)[-1] + "_0001")
    async with engine.begin() as conn:
        for package in OWNERS:
            await conn.execute(text(f"DROP TABLE alembic_version_{package.rsplit('.', 1)[-1]}"))
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


async def test_analyses_of_an_earlier_revision_are_kept_and_still_diffed(
    engine: AsyncEngine,
) -> None:
    # A database at analyzer_0001, whose analyses carry no upload sequence.
    await _upgrade_to(engine, "services.analyzer", "analyzer_0001")
    report = analyze(tiny_model())
    async with engine.begin() as conn:
        for version in ("1.0.0", "2.0.0"):
            await conn.execute(
                text(
                    "INSERT INTO analyzer_reports (model, version, artifact_id, report, "
                    "analyzed_at) VALUES ('kept', :version, 'a', :report, :now)"
                ),
                {"version": version, "report": report.model_dump_json(), "now": datetime.now(UTC)},
            )
    await upgrade(engine, "services.analyzer")
    assert await missing_from_migrations(engine, "services.analyzer") == ""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT version, sequence, report FROM analyzer_reports ORDER BY id")
            )
        ).all()
    assert [(v, seq) for v, seq, _ in rows] == [("1.0.0", None), ("2.0.0", None)]
    assert AnalysisReport.model_validate_json(rows[0][2]) == report
    # New analyses carry their sequence; the old rows are still candidates for a diff.
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions.begin() as session:
        past = await analyses_of(session, model="kept")
        assert previous_analysis(past, version="1.0.1", sequence=3) == past[0]  # by semver
        await save_analysis(
            session, model="kept", version="1.0.1", sequence=3, artifact_id="b", report=report
        )
    async with sessions() as session:
        past = await analyses_of(session, model="kept")
    chosen = previous_analysis(past, version="1.1.0", sequence=4)
    assert chosen is not None and (chosen.version, chosen.sequence) == ("1.0.1", 3)


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

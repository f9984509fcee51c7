"""Schema migrations with Alembic: each package that owns tables keeps a history of its own.

A package's history lives in ``<package>/migrations/versions`` and is recorded in the
table ``alembic_version_<last part of the package name>``, so services that share one
database upgrade their own tables and no others. Every service upgrades what it owns when
it starts (see docs/database.md); replicas starting together take turns under a lock.

``python -m services.common.migrate check PACKAGE...`` upgrades a scratch SQLite database
and prints what the models have that the migrations lack, as Alembic operations to paste
into a new revision.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import sys
import tempfile
import weakref
import zlib
from collections.abc import AsyncIterator
from typing import Any

from alembic import command
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.config import Config
from alembic.operations.ops import UpgradeOps
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["run_env", "upgrade"]


def _version_table(package: str) -> str:
    return "alembic_version_" + package.rsplit(".", 1)[-1]


def _config(package: str, connection: Connection, **attributes: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", f"{package}:migrations")
    cfg.attributes.update(connection=connection, version_table=_version_table(package))
    cfg.attributes.update(attributes)
    return cfg


def run_env(metadata: MetaData) -> None:
    """The body of every ``migrations/env.py``: migrate (or compare) ``metadata``'s tables."""
    from alembic import context

    cfg = context.config
    connection: Connection = cfg.attributes["connection"]

    def own(name: str | None, type_: str, _parent: Any) -> bool:
        # One database holds every service's tables: compare only this package's.
        return type_ != "table" or name in metadata.tables

    options: dict[str, Any] = {
        "version_table": cfg.attributes["version_table"],
        "include_name": own,
        "render_as_batch": True,  # SQLite alters a table by copying it
        "compare_type": True,
    }
    if "compare" in cfg.attributes:
        migration = MigrationContext.configure(connection, opts=options)
        changes = produce_migrations(migration, metadata).upgrade_ops
        if changes is None or changes.is_empty():
            cfg.attributes["compare"].append("")
        else:
            cfg.attributes["compare"].append(render(changes))
        return
    context.configure(connection=connection, target_metadata=metadata, **options)
    with context.begin_transaction():
        context.run_migrations()


def render(changes: UpgradeOps) -> str:
    """Alembic operations as the Python of a revision's ``upgrade``."""
    return render_python_code(changes, render_as_batch=True)


@contextlib.asynccontextmanager
async def _turn(engine: AsyncEngine, conn: Any) -> AsyncIterator[None]:
    """Hold the database's migration lock: replicas that start together take turns."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        key = zlib.crc32(b"edgeaiforge-migrations")
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        yield
    elif url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        # SQLite runs DDL outside a transaction: a lock file beside the database.
        path = f"{url.database}.migrate.lock"
        fd = await asyncio.to_thread(os.open, path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
    else:
        yield


#: Alembic keeps the running migration in module globals: one at a time in a process too.
_in_process: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _process_lock() -> asyncio.Lock:
    return _in_process.setdefault(asyncio.get_running_loop(), asyncio.Lock())


def _upgrade_sync(connection: Connection, package: str) -> None:
    command.upgrade(_config(package, connection), "head")


async def upgrade(engine: AsyncEngine, *packages: str) -> None:
    """Bring the tables of ``packages`` (e.g. ``"services.registry"``) to their newest revision.

    A database made before migrations existed holds the tables but no version row: the
    first revision of each package creates only the tables that are missing, so it adopts
    such a database and keeps its rows.
    """
    for package in packages:
        async with _process_lock(), engine.begin() as conn, _turn(engine, conn):
            await conn.run_sync(_upgrade_sync, package)


async def missing_from_migrations(engine: AsyncEngine, package: str) -> str:
    """After :func:`upgrade`: what ``package``'s models hold that its migrations do not ("" if
    nothing), as the Python of a revision."""
    found: list[str] = []
    async with _process_lock(), engine.connect() as conn:
        await conn.run_sync(
            lambda c: command.upgrade(_config(package, c, compare=found), "head", sql=False)
        )
    return found[0] if found else ""


async def _check(packages: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_async_engine(make_url(f"sqlite+aiosqlite:///{tmp}/check.db"))
        try:
            await upgrade(engine, *packages)
            status = 0
            for package in packages:
                code = await missing_from_migrations(engine, package)
                if code:
                    status = 1
                    print(f"# {package}: the models differ from the migrations\n{code}")
                else:
                    print(f"# {package}: the migrations match the models")
            return status
        finally:
            await engine.dispose()


def main() -> None:
    """``check PACKAGE...``: compare each package's models with its migrations."""
    parser = argparse.ArgumentParser(prog="python -m services.common.migrate")
    parser.add_argument("action", choices=["check"])
    parser.add_argument("packages", nargs="+", metavar="PACKAGE")
    args = parser.parse_args()
    sys.exit(asyncio.run(_check(args.packages)))


if __name__ == "__main__":
    main()

"""The one place the tests and the benchmarks start servers.

NATS (the project's config, fresh passwords), Mosquitto (the project's config, provisioned
with the platform's ACL defaults and the services' role), InfluxDB and PostgreSQL, each on
a free loopback port with its data in a directory of its own. A server that cannot start
fails with the package to install; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeaiforge_stack.servers import (
    InfluxServer,
    MosquittoServer,
    NatsServer,
    ServerError,
    ServerNotFoundError,
    free_port,
    generate_nats_passwords,
)
from services.common.mqtt_admin import SERVICE_ROLE, MqttAdmin, provision_platform

__all__ = [
    "InfluxServer",
    "MosquittoServer",
    "NatsServer",
    "PostgresServer",
    "Servers",
    "free_port",
    "influxdb",
    "mosquitto",
    "mqtt_admin",
    "nats",
    "postgres",
    "servers",
]

_PG_BIN_DIRS = (
    "/usr/local/bin",
    *sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True),
)
_MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432"


@contextmanager
def nats(data_dir: Path, *, users: bool = True) -> Iterator[NatsServer]:
    """`nats-server -js` with a temporary store. With ``users`` it runs the project's config
    (`nats/nats-server.conf`) with fresh passwords: `.url` logs in as `admin`,
    `.url_for(user)`, `.password_for(user)`; without, anyone may connect."""
    passwords = generate_nats_passwords() if users else None
    with NatsServer(data_dir=data_dir, passwords=passwords) as server:
        yield server


@contextmanager
def influxdb(data_dir: Path) -> Iterator[InfluxServer]:
    """InfluxDB 1.x `influxd` with temporary data; `.url` (`http://127.0.0.1:port`)."""
    with InfluxServer(data_dir=data_dir) as server:
        yield server


def mqtt_admin(server: MosquittoServer) -> MqttAdmin:
    """A dynamic-security admin client of ``server`` (enter it with ``async with``)."""
    return MqttAdmin(
        hostname=server.host,
        port=server.port,
        username=server.admin_username,
        password=server.admin_password,
    )


async def _provision(server: MosquittoServer) -> None:
    async with mqtt_admin(server) as admin:
        await provision_platform(admin)


@contextmanager
def mosquitto(data_dir: Path) -> Iterator[MosquittoServer]:
    """Mosquitto with the project's config and the platform's ACL defaults.

    `.host`, `.port`, `.admin_username`, `.admin_password`. The defaults deny whatever no
    role allows, and the services' role (`SERVICE_ROLE`) exists.
    """
    with MosquittoServer(data_dir=data_dir) as server:
        asyncio.run(_provision(server))
        yield server


@dataclass
class Servers:
    """NATS, Mosquitto and InfluxDB together, as the benchmarks use them."""

    nats: NatsServer
    mosquitto: MosquittoServer
    influx: InfluxServer
    service_user: tuple[str, str] = field(default=("", ""))

    async def mqtt_user(
        self, roles: list[str] | None = None, acls: list[Any] | None = None
    ) -> tuple[str, str]:
        """A fresh broker account with the given roles (default: the services' role)."""
        name = f"bench-{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(16)
        async with mqtt_admin(self.mosquitto) as admin:
            if acls:
                await admin.create_role(name, acls=acls)
                roles = [*(roles or []), name]
            await admin.create_client(
                name,
                password,
                roles=[{"rolename": r} for r in (roles if roles is not None else [SERVICE_ROLE])],
            )
        return name, password


@contextmanager
def servers(workdir: Path, *, nats_users: bool = False) -> Iterator[Servers]:
    """The three servers under ``workdir``, with a broker account of the services' role."""
    with (
        nats(workdir / "nats", users=nats_users) as nats_server,
        mosquitto(workdir / "mosquitto") as mosquitto_server,
        influxdb(workdir / "influxdb") as influx,
    ):
        running = Servers(nats_server, mosquitto_server, influx)
        running.service_user = asyncio.run(running.mqtt_user())
        yield running


# --- PostgreSQL ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    """Where the test databases are made; `url` is the maintenance database's URL."""

    host: str
    port: int
    user: str
    psql: str
    temporary: bool

    def url(self, database: str = "postgres") -> str:
        """libpq URL of `database` (add `+asyncpg` after the scheme for SQLAlchemy)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def sql(self, statement: str) -> None:
        """Run one statement in the maintenance database."""
        _run(
            [self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url(), "-c", statement],
            what="psql",
        )


def _pg_binary(name: str) -> str | None:
    for directory in _PG_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def _run(command: list[str], *, what: str, user: str | None = None) -> str:
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise ServerError(f"{what} failed ({result.returncode}): {result.stderr or result.stdout}")
    return result.stdout


def _start_temporary_cluster(directory: Path) -> tuple[PostgresServer, Callable[[], None]]:
    initdb, pg_ctl, psql = _pg_binary("initdb"), _pg_binary("pg_ctl"), _pg_binary("psql")
    if initdb is None or pg_ctl is None or psql is None:
        raise ServerNotFoundError("initdb/pg_ctl/psql", "postgresql")
    # initdb and postgres refuse to run as root: run them as the `postgres` user.
    run_as = None
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise ServerError("running as root without `runuser`: cannot run initdb")
        run_as = "postgres"
        owner = pwd.getpwnam(run_as)
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    data = directory / "data"
    port = free_port()
    _run(
        [initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
         "--locale=C", "--no-sync"],
        what="initdb",
        user=run_as,
    )  # fmt: skip
    options = (
        f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off"
    )
    log = directory / "postgres.log"
    try:
        _run(
            [pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "15", "start"],
            what="pg_ctl start",
            user=run_as,
        )
    except ServerError as error:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise ServerError(f"{error}\n--- {log} ---\n{tail}") from error

    def stop() -> None:
        _run(
            [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            what="pg_ctl stop",
            user=run_as,
        )

    return PostgresServer("127.0.0.1", port, "postgres", psql, temporary=True), stop


@contextmanager
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for test databases.

    First choice: a temporary cluster (`initdb` + `pg_ctl` from /usr/local/bin or
    /usr/lib/postgresql/*/bin) on a free loopback port, in a directory under /tmp that the
    `postgres` user can enter (pytest's own tmp dirs are private to root), run through
    `runuser -u postgres` when the tests run as root, since initdb refuses root. If that
    cannot be done, the machine's server on 127.0.0.1:5432 (user postgres, trust auth) is
    used instead: each test still gets its own database, dropped afterwards. With neither,
    the run fails naming the package to install.
    """
    directory = Path(tempfile.mkdtemp(prefix="eaf-postgres-"))
    try:
        server, stop = _start_temporary_cluster(directory)
    except ServerError as error:
        shutil.rmtree(directory, ignore_errors=True)
        psql = _pg_binary("psql")
        if psql is None:
            raise ServerNotFoundError("psql", "postgresql-client") from error
        fallback = PostgresServer("127.0.0.1", 5432, "postgres", psql, temporary=False)
        try:
            fallback.sql("SELECT 1")
        except ServerError as fallback_error:
            raise ServerError(
                "no PostgreSQL for the tests: a temporary cluster failed "
                f"({error}) and {_MACHINE_POSTGRES} did not answer ({fallback_error}); "
                "install the Debian package 'postgresql'"
            ) from fallback_error
        yield fallback
        return
    try:
        yield server
    finally:
        stop()
        shutil.rmtree(directory, ignore_errors=True)

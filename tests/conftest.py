"""Shared fixtures: real NATS, Mosquitto, InfluxDB and PostgreSQL, started once per run.

Every server runs on a free loopback port with its data in a temporary directory, so the
tests depend on nothing else running on the machine. A server that cannot start fails the
run with the package to install; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import pytest

from edgeaiforge_stack.servers import (
    InfluxServer,
    MosquittoServer,
    NatsServer,
    ServerError,
    ServerNotFoundError,
    free_port,
    generate_nats_passwords,
)
from schemas.config import NatsConfig
from services.common.mqtt_admin import Acl, MqttAdmin, RoleRef, provision_platform

_PG_BIN_DIRS = (
    "/usr/local/bin",
    *sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True),
)
_MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def new_unique_id(prefix: str = "t") -> str:
    """A short id, unique per call, safe in MQTT topics, NATS subjects and SQL names."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique_id() -> Callable[..., str]:
    """`unique_id()` or `unique_id("dev")`: ids for per-test topics, subjects and names."""
    return new_unique_id


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parent directory of the servers' data for this run."""
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def nats_server(servers_dir: Path) -> Iterator[NatsServer]:
    """`nats-server -js` with the project's config (`nats/nats-server.conf`), fresh passwords
    and a temporary store. `.url` logs in as `admin`; `.url_for(user)`, `.password_for(user)`.
    """
    passwords = generate_nats_passwords()
    with NatsServer(data_dir=servers_dir / "nats", passwords=passwords) as server:
        yield server


@pytest.fixture
def nats_config(nats_server: NatsServer) -> Callable[..., NatsConfig]:
    """`nats_config("deployer", request_timeout=5)`: the `[nats]` settings of one user."""

    def make(user: str, **overrides: object) -> NatsConfig:
        return NatsConfig.model_validate(
            {
                "url": nats_server.plain_url,
                "user": user,
                "password": nats_server.password_for(user),
                **overrides,
            }
        )

    return make


@pytest.fixture(scope="session")
def influxdb_server(servers_dir: Path) -> Iterator[InfluxServer]:
    """InfluxDB 1.x `influxd` with temporary data; `.url` (`http://127.0.0.1:port`)."""
    with InfluxServer(data_dir=servers_dir / "influxdb") as server:
        yield server


@pytest.fixture(scope="session")
def mosquitto_server(servers_dir: Path) -> Iterator[MosquittoServer]:
    """Mosquitto with the project's config and the platform's ACL defaults.

    `.host`, `.port`, `.admin_username`, `.admin_password`. The defaults deny whatever no
    role allows, and the services' role (`SERVICE_ROLE`) exists.
    """
    with MosquittoServer(data_dir=servers_dir / "mosquitto") as server:
        asyncio.run(_provision(server))
        yield server


async def _provision(server: MosquittoServer) -> None:
    async with MqttAdmin(
        hostname=server.host,
        port=server.port,
        username=server.admin_username,
        password=server.admin_password,
    ) as admin:
        await provision_platform(admin)


class MqttCredentials(NamedTuple):
    """A broker user made for one test."""

    username: str
    password: str


class MqttUserFactory(Protocol):
    """`await mqtt_user(roles=[...], acls=[...])` -> (username, password)."""

    def __call__(
        self, *, roles: Iterable[str | RoleRef] = (), acls: Iterable[Acl] = ()
    ) -> Awaitable[MqttCredentials]: ...


@pytest.fixture
async def mqtt_admin(mosquitto_server: MosquittoServer) -> AsyncIterator[MqttAdmin]:
    """A connected dynamic-security admin client for the test broker."""
    async with MqttAdmin(
        hostname=mosquitto_server.host,
        port=mosquitto_server.port,
        username=mosquitto_server.admin_username,
        password=mosquitto_server.admin_password,
    ) as admin:
        yield admin


@pytest.fixture
async def mqtt_user(mqtt_admin: MqttAdmin) -> AsyncIterator[MqttUserFactory]:
    """Make fresh broker users: `await mqtt_user(roles=[...], acls=[...])`.

    `acls`, if given, become a new role of the user's own. Users and roles made here are
    deleted after the test.
    """
    users: list[str] = []
    roles_made: list[str] = []

    async def make(
        *, roles: Iterable[str | RoleRef] = (), acls: Iterable[Acl] = ()
    ) -> MqttCredentials:
        username = new_unique_id("user-")
        password = secrets.token_urlsafe(16)
        granted = list(roles)
        acl_list = list(acls)
        if acl_list:
            role = f"role-{username}"
            await mqtt_admin.create_role(role, acls=acl_list)
            roles_made.append(role)
            granted.append(role)
        await mqtt_admin.create_client(username, password, roles=granted)
        users.append(username)
        return MqttCredentials(username, password)

    yield make
    for username in users:
        await mqtt_admin.delete_client(username)
    for role in roles_made:
        await mqtt_admin.delete_role(role)


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
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


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL (`postgresql://postgres@127.0.0.1:port/<name>`) of a fresh database, dropped after."""
    name = new_unique_id("eaf_test_")
    postgres_server.sql(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def ingester_settings(  # type: ignore[no-untyped-def]
    tmp_path, nats_server, mosquitto_server, influxdb_server, mqtt_user, unique_id
):
    """Settings of an ingester on the test servers, logged in with the services' role."""
    from metrics_support import make_settings

    from services.common.mqtt_admin import SERVICE_ROLE

    return make_settings(
        tmp_path=tmp_path, mosquitto=mosquitto_server, user=await mqtt_user(roles=[SERVICE_ROLE]),
        unique_id=unique_id, nats_url=nats_server.url, influx_url=influxdb_server.url,
    )  # fmt: skip

"""Shared fixtures: real NATS, Mosquitto, InfluxDB and PostgreSQL, started once per run.

Loaded by ``pytest_plugins`` in ``tests/conftest.py``. The servers come from
``tests.support.servers``: every one runs on a free loopback port with its data in a
temporary directory, so the tests depend on nothing else running on the machine.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

import pytest

from schemas.config import NatsConfig
from services.common.mqtt_admin import Acl, MqttAdmin, RoleRef
from tests.support import servers
from tests.support.servers import InfluxServer, MosquittoServer, NatsServer, PostgresServer


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
    with servers.nats(servers_dir / "nats") as server:
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
    with servers.influxdb(servers_dir / "influxdb") as server:
        yield server


@pytest.fixture(scope="session")
def mosquitto_server(servers_dir: Path) -> Iterator[MosquittoServer]:
    """Mosquitto with the project's config and the platform's ACL defaults.

    `.host`, `.port`, `.admin_username`, `.admin_password`. The defaults deny whatever no
    role allows, and the services' role (`SERVICE_ROLE`) exists.
    """
    with servers.mosquitto(servers_dir / "mosquitto") as server:
        yield server


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
    async with servers.mqtt_admin(mosquitto_server) as admin:
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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for test databases (see ``tests.support.servers.postgres``)."""
    with servers.postgres() as server:
        yield server


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
async def ingester_settings(
    tmp_path, nats_server, mosquitto_server, influxdb_server, mqtt_user, unique_id
):
    """Settings of an ingester on the test servers, logged in with the services' role."""
    from services.common.mqtt_admin import SERVICE_ROLE
    from tests.support.metrics import make_settings

    return make_settings(
        tmp_path=tmp_path, mosquitto=mosquitto_server, user=await mqtt_user(roles=[SERVICE_ROLE]),
        unique_id=unique_id, nats_url=nats_server.url, influx_url=influxdb_server.url,
    )  # fmt: skip

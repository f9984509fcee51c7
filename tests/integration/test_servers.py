"""The test servers are real and set up as the product needs: auth, ACLs, persistence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiomqtt
import asyncpg
import httpx
import nats
import pytest
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision
from paho.mqtt.reasoncodes import ReasonCode

from edgeaiforge_stack import _launcher
from edgeaiforge_stack import servers as _servers
from edgeaiforge_stack.servers import (
    InfluxServer,
    MosquittoServer,
    NatsServer,
    ServerNotFoundError,
    ServerStartError,
)
from services.common.mqtt_admin import (
    SERVICE_ROLE,
    DynsecAlreadyExistsError,
    InvalidTopicSegmentError,
    MqttAdmin,
    device_role_acls,
)

PREFIX = "eaf/v1"
# The `mqtt_user` fixture: `await mqtt_user(roles=[...], acls=[...])` -> (username, password).
MqttUserFactory = Callable[..., Awaitable[tuple[str, str]]]


def mqtt_client(
    server: MosquittoServer, username: str | None, password: str | None
) -> aiomqtt.Client:
    return aiomqtt.Client(
        server.host,
        server.port,
        username=username,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=5,
    )


async def next_message(client: aiomqtt.Client, timeout: float = 5.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        return await anext(client.messages)


async def test_qos1_message_arrives(
    mosquitto_server: MosquittoServer, mqtt_user: MqttUserFactory, unique_id: Callable[..., str]
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    topic = f"{PREFIX}/devices/{unique_id('dev-')}/desired"
    async with (
        mqtt_client(mosquitto_server, *user) as subscriber,
        mqtt_client(mosquitto_server, *user) as publisher,
    ):
        await subscriber.subscribe(topic, qos=1)
        await publisher.publish(topic, b"hello", qos=1)
        message = await next_message(subscriber)
    assert message.payload == b"hello"
    assert message.qos == 1


async def test_anonymous_client_is_refused(mosquitto_server: MosquittoServer) -> None:
    with pytest.raises(aiomqtt.MqttCodeError) as caught:
        async with mqtt_client(mosquitto_server, None, None):
            pass
    assert caught.value.rc in (ReasonCode(2, identifier=0x87), 5)


async def test_wrong_password_is_refused(
    mosquitto_server: MosquittoServer, mqtt_user: MqttUserFactory
) -> None:
    username, _ = await mqtt_user(roles=[SERVICE_ROLE])
    with pytest.raises(aiomqtt.MqttCodeError) as caught:
        async with mqtt_client(mosquitto_server, username, "not-the-password"):
            pass
    assert caught.value.rc in (
        ReasonCode(2, identifier=0x86),
        ReasonCode(2, identifier=0x87),
        4,
        5,
    )


async def test_device_is_confined_to_its_own_topics(
    mosquitto_server: MosquittoServer, mqtt_user: MqttUserFactory, unique_id: Callable[..., str]
) -> None:
    dev_a, dev_b = unique_id("dev-a-"), unique_id("dev-b-")
    device = await mqtt_user(acls=device_role_acls(dev_a))
    platform = await mqtt_user(roles=[SERVICE_ROLE])
    async with (
        mqtt_client(mosquitto_server, *device) as device_client,
        mqtt_client(mosquitto_server, *platform) as platform_client,
    ):
        granted = await device_client.subscribe(f"{PREFIX}/devices/{dev_a}/desired", qos=1)
        refused = await device_client.subscribe(f"{PREFIX}/devices/{dev_b}/desired", qos=1)
        wildcard = await device_client.subscribe(f"{PREFIX}/devices/+/desired", qos=1)
        assert [rc.value for rc in granted] == [1]  # type: ignore[union-attr]
        assert [rc.value for rc in refused] == [0x87]  # type: ignore[union-attr]
        assert [rc.value for rc in wildcard] == [0x87]  # type: ignore[union-attr]

        # Shared subscriptions are checked against the whole `$share/...` filter.
        shared = await platform_client.subscribe(f"$share/ingest/{PREFIX}/devices/+/state", qos=1)
        assert [rc.value for rc in shared] == [1]  # type: ignore[union-attr]
        # The broker drops the forbidden publish; QoS 1 from one client keeps its order, so
        # the allowed one arriving first proves the forbidden one was not delivered.
        await device_client.publish(f"{PREFIX}/devices/{dev_b}/state", b"forged", qos=1)
        await device_client.publish(f"{PREFIX}/devices/{dev_a}/state", b"mine", qos=1)
        # Other tests' devices share this broker (their retained states reach a new shared
        # subscription too): look only at this test's two devices.
        ours = {f"{PREFIX}/devices/{dev_a}/state", f"{PREFIX}/devices/{dev_b}/state"}
        message = await next_message(platform_client)
        while str(message.topic) not in ours:
            message = await next_message(platform_client)
        assert (str(message.topic), message.payload) == (f"{PREFIX}/devices/{dev_a}/state", b"mine")


def test_device_id_must_be_one_topic_level() -> None:
    for bad in ("", "a/b", "+", "dev#"):
        with pytest.raises(InvalidTopicSegmentError):
            device_role_acls(bad)


async def test_admin_errors_are_typed(mqtt_admin: MqttAdmin, unique_id: Callable[..., str]) -> None:
    name = unique_id("dup-")
    await mqtt_admin.create_client(name, "pw")
    try:
        assert name in await mqtt_admin.list_clients()
        with pytest.raises(DynsecAlreadyExistsError, match="already exists"):
            await mqtt_admin.create_client(name, "pw")
    finally:
        await mqtt_admin.delete_client(name)


async def test_broker_restart_keeps_users_and_retained(tmp_path: Path) -> None:
    server = MosquittoServer(data_dir=tmp_path / "mosquitto")
    with server:
        async with MqttAdmin(
            hostname=server.host,
            port=server.port,
            username=server.admin_username,
            password=server.admin_password,
        ) as admin:
            await admin.create_role("all", acls=device_role_acls("d1"))
            await admin.create_client("d1", "pw", roles=["all"])
        async with mqtt_client(server, "d1", "pw") as client:
            await client.publish(f"{PREFIX}/devices/d1/state", b"kept", qos=1, retain=True)
        port = server.port
        server.stop()
        server.start()
        assert server.port == port
        async with MqttAdmin(
            hostname=server.host,
            port=server.port,
            username=server.admin_username,
            password=server.admin_password,
        ) as admin:
            await admin.add_role_acl(
                "all", acltype="subscribePattern", topic=f"{PREFIX}/devices/d1/state", allow=True
            )
        async with mqtt_client(server, "d1", "pw") as client:
            await client.subscribe(f"{PREFIX}/devices/d1/state", qos=1)
            message = await next_message(client)
    assert message.payload == b"kept"
    assert message.retain


async def test_influxdb_point_reads_back_with_its_timestamp(
    influxdb_server: InfluxServer, unique_id: Callable[..., str]
) -> None:
    database = unique_id("db_")
    timestamp_ns = time.time_ns() - 3_600_000_000_000 + 123  # an hour ago, odd nanoseconds
    line = (
        Point("inference")
        .tag("device", "dev-1")
        .field("latency_p50", 12.5)
        .time(timestamp_ns, WritePrecision.NS)
        .to_line_protocol()
    )
    async with httpx.AsyncClient(base_url=influxdb_server.url, timeout=10) as http:
        created = await http.post("/query", params={"q": f'CREATE DATABASE "{database}"'})
        assert created.status_code == 200, created.text
        written = await http.post(
            "/write", params={"db": database, "precision": "ns"}, content=line
        )
        assert written.status_code == 204, written.text
        answer = await http.get(
            "/query",
            params={
                "db": database,
                "epoch": "ns",
                "q": 'SELECT "latency_p50", "device" FROM "inference"',
            },
        )
    assert answer.status_code == 200, answer.text
    series = answer.json()["results"][0]["series"][0]
    assert series["values"] == [[timestamp_ns, 12.5, "dev-1"]]


async def test_nats_jetstream_stores_and_returns_a_message(
    nats_server: NatsServer, unique_id: Callable[..., str]
) -> None:
    stream, subject = unique_id("S"), f"{unique_id('eaf')}.event"
    connection = await nats.connect(nats_server.url)
    try:
        js = connection.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        ack = await js.publish(subject, b"payload", headers={"Nats-Msg-Id": "one"})
        again = await js.publish(subject, b"payload", headers={"Nats-Msg-Id": "one"})
        stored = await js.get_msg(stream, ack.seq)
    finally:
        await connection.close()
    assert stored.data == b"payload"
    assert again.duplicate


async def test_postgres_database_accepts_a_table(postgres_url: str) -> None:
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("CREATE TABLE models (id serial PRIMARY KEY, name text)")
        await connection.execute("INSERT INTO models (name) VALUES ($1)", "resnet")
        assert await connection.fetchval("SELECT name FROM models") == "resnet"
    finally:
        await connection.close()


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_launcher, "_EXTRA_BIN_DIRS", (str(tmp_path),))
    with pytest.raises(ServerNotFoundError, match="'influxdb'"):
        InfluxServer(data_dir=tmp_path / "influx").start()


def test_start_failure_shows_the_server_log(tmp_path: Path) -> None:
    bad_config = tmp_path / "bad.conf"
    bad_config.write_text("this is { not a nats config\n")
    with pytest.raises(ServerStartError, match="NATS did not start") as caught:
        NatsServer(data_dir=tmp_path / "nats", config_file=bad_config).start()
    assert caught.value.log_tail


def test_docker_config_is_the_rendered_template() -> None:
    rendered = Path(_servers.MOSQUITTO_TEMPLATE).with_name("mosquitto.conf")
    assert rendered.read_text() == _servers.docker_mosquitto_config(), (
        "mosquitto/mosquitto.conf is out of date: regenerate it (see mosquitto/README.md)"
    )

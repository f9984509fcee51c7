"""The project's nats-server config (``nats/nats-server.conf``) on a real server: nobody
gets in without valid credentials, only integrators send commands, observers only read,
and each service publishes and subscribes only where its code needs to."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from edgeaiforge_stack.servers import (
    NATS_CONFIG,
    NATS_USERS,
    NatsServer,
    ServerError,
    ServerStartError,
    nats_environment,
    nats_password_variable,
)
from schemas.commands import CommandRpc
from schemas.config import NatsConfig
from schemas.events import (
    DeploymentTargetUpdated,
    DeviceEnrolled,
    ModelPerformanceRegressed,
    TargetState,
)
from schemas.rpc import Health, HealthRequest, health_rpc
from services.common.bus import Bus

COMMAND = CommandRpc.CREATE_DEPLOYMENT.subject


class Login:
    """A connection as one user that keeps the errors the server sent it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NatsClient | None = None

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))

    def violations(self) -> list[str]:
        """The server's permission violations, lower case."""
        return [e.lower() for e in self.errors if "permissions violation" in e.lower()]


@asynccontextmanager
async def login(nats_server: Any, user: str, password: str | None = None) -> AsyncIterator[Any]:
    session = Login()
    session.nc = await nats.connect(
        nats_server.plain_url,
        user=user,
        password=password if password is not None else nats_server.password_for(user),
        inbox_prefix=f"_INBOX.{user}",
        error_cb=session.on_error,
        allow_reconnect=False,
    )
    try:
        yield session
    finally:
        await session.nc.close()


async def refused_connect(url: str, **kwargs: Any) -> list[str]:
    """Connect and expect the server to refuse; returns what it said."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    with pytest.raises(Exception):  # noqa: B017 - nats-py raises several kinds here
        nc = await nats.connect(
            url, error_cb=on_error, allow_reconnect=False, connect_timeout=5, **kwargs
        )
        await nc.close()
    return errors


async def test_no_credentials_wrong_password_or_device_login_is_refused(
    nats_server, mqtt_user
) -> None:
    device = await mqtt_user()  # what a device holds: broker credentials, none for NATS
    anonymous = await refused_connect(nats_server.plain_url)
    wrong = await refused_connect(nats_server.plain_url, user="integrator", password="guess")
    as_device = await refused_connect(
        nats_server.plain_url, user=device.username, password=device.password
    )
    for said in (anonymous, wrong, as_device):
        assert any("authorization violation" in e.lower() for e in said), said


async def watch(nats_server: Any, subject: str) -> tuple[NatsClient, list[Msg]]:
    """An admin subscription on ``subject`` that records what arrives."""
    seen: list[Msg] = []
    admin = await nats.connect(nats_server.url)

    async def record(msg: Msg) -> None:
        seen.append(msg)

    await admin.subscribe(subject, cb=record)
    await admin.flush()
    return admin, seen


@pytest.mark.parametrize(
    "user", ["observer", "registry", "validator", "analyzer", "deployer", "ingester", "api"]
)
async def test_only_an_integrator_may_send_a_command(nats_server, user: str) -> None:
    marker = uuid.uuid4().hex.encode()
    admin, seen = await watch(nats_server, "eaf.cmd.>")
    try:
        async with login(nats_server, user) as them:
            await them.nc.publish(COMMAND, marker)
            await them.nc.flush()
            await asyncio.sleep(0.3)
        async with login(nats_server, "integrator") as integrator:
            await integrator.nc.publish(COMMAND, marker)
            await integrator.nc.flush()
            await asyncio.sleep(0.3)
    finally:
        await admin.close()
    assert [m.data for m in seen] == [marker], "only the integrator's command arrives"
    assert any(f'publish to "{COMMAND.lower()}"' in v for v in them.violations()), them.errors
    assert integrator.violations() == []


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("validator", "eaf.deployment.created"),
        ("analyzer", "eaf.model.validated"),
        ("deployer", "eaf.model.validated"),
        ("registry", "eaf.deployment.completed"),
        ("ingester", "eaf.device.enrolled"),
        ("tracker", "eaf.rpc.deployer.create_deployment"),
        ("api", "eaf.model.uploaded"),
        ("integrator", "eaf.model.uploaded"),
        ("observer", "eaf.rpc.registry.create_api_key"),
        ("validator", "$JS.API.STREAM.DELETE.EAF"),
        ("integrator", "$JS.API.STREAM.PURGE.EAF"),
    ],
)
async def test_a_user_cannot_publish_outside_its_subjects(
    nats_server, user: str, subject: str
) -> None:
    admin, seen = await watch(nats_server, subject)
    try:
        async with login(nats_server, user) as them:
            await them.nc.publish(subject, b"{}")
            await them.nc.flush()
            await asyncio.sleep(0.3)
    finally:
        await admin.close()
    assert seen == []
    assert any(f'publish to "{subject.lower()}"' in v for v in them.violations()), them.errors


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("api", "_INBOX.>"),  # other users' replies: enrolment passwords, API keys
        ("observer", "_INBOX.registry.>"),
        ("observer", "eaf.rpc.>"),
        ("integrator", "eaf.cmd.>"),
        ("validator", "eaf.rpc.registry.>"),
    ],
)
async def test_a_user_cannot_read_what_is_not_for_it(nats_server, user: str, subject: str) -> None:
    async with login(nats_server, user) as them:
        await them.nc.subscribe(subject)
        await them.nc.flush()
        await asyncio.sleep(0.3)
    assert any(f'subscription to "{subject.lower()}"' in v for v in them.violations()), them.errors


@pytest.mark.parametrize("user", ["observer", "integrator"])
async def test_observers_and_integrators_read_events_from_the_stream(
    nats_server, user: str
) -> None:
    event = DeviceEnrolled(device_id=f"sec-{uuid.uuid4().hex[:8]}")
    async with Bus(NatsConfig(url=nats_server.url), service="test-admin") as admin:
        await admin.publish(event)
    async with login(nats_server, user) as them:
        js = them.nc.jetstream()
        sub = await js.subscribe(event.SUBJECT, stream="EAF", ordered_consumer=True)
        found = None
        try:
            while found is None:
                msg = await sub.next_msg(timeout=10)
                if DeviceEnrolled.model_validate_json(msg.data).event_id == event.event_id:
                    found = msg
        finally:
            await sub.unsubscribe()
    assert found is not None
    assert them.violations() == []


async def test_services_with_their_own_users_consume_publish_and_answer(
    nats_server, nats_config, unique_id
) -> None:
    """What the ingester and the tracker do on the bus (the other services run with their
    own users in test_commands.py)."""
    got: dict[str, asyncio.Future[Any]] = {
        "enrolled": asyncio.get_running_loop().create_future(),
        "target": asyncio.get_running_loop().create_future(),
    }
    enrolled = DeviceEnrolled(device_id=unique_id("sec-"))
    target = DeploymentTargetUpdated(
        deployment_id=uuid.uuid4(), device_id=enrolled.device_id, state=TargetState.NOTIFIED
    )
    ingester = Bus(nats_config("ingester"), service="ingester")
    ingester.serve_health()

    @ingester.consumer(DeviceEnrolled, durable=unique_id("ingester-enrolled-"))
    async def on_enrolled(e: DeviceEnrolled) -> None:
        if e.event_id == enrolled.event_id and not got["enrolled"].done():
            got["enrolled"].set_result(e)

    @ingester.consumer(DeploymentTargetUpdated, durable=unique_id("ingester-target-"))
    async def on_target(e: DeploymentTargetUpdated) -> None:
        if e.event_id == target.event_id and not got["target"].done():
            got["target"].set_result(e)

    tracker = Bus(nats_config("tracker"), service="tracker")
    tracker.serve_health()
    regressed = ModelPerformanceRegressed(
        model=unique_id("m-"), version="1.0.1", baseline_version="1.0.0",
        metric="error_rate", baseline_value=0.0, value=0.5, threshold=0.02,
    )  # fmt: skip
    async with (
        ingester,
        tracker,
        Bus(NatsConfig(url=nats_server.url), service="test-admin") as admin,
        login(nats_server, "integrator") as integrator,
    ):
        await admin.publish(enrolled)
        await admin.publish(target)
        await tracker.publish(regressed)  # waits for the stream's acknowledgement
        await asyncio.wait_for(asyncio.gather(*got.values()), 20)
        for service in ("ingester", "tracker"):
            health = await admin.call(health_rpc(service), HealthRequest())
            assert health.service == service
        reply = await integrator.nc.request("eaf.rpc.tracker.health", b"{}", timeout=5)
        assert Health.model_validate_json(reply.data).service == "tracker"
    stored = await admin_fetch(nats_server, regressed.SUBJECT, regressed.event_id)
    assert stored is not None
    assert integrator.violations() == []


async def admin_fetch(nats_server: Any, subject: str, event_id: uuid.UUID) -> bytes | None:
    nc = await nats.connect(nats_server.url)
    try:
        sub = await nc.jetstream().subscribe(subject, stream="EAF", ordered_consumer=True)
        while True:
            msg = await sub.next_msg(timeout=10)
            if str(event_id) in msg.data.decode():
                return msg.data
    finally:
        await nc.close()


def test_the_config_refuses_to_start_without_every_password(tmp_path) -> None:
    """No password variable, no server: the config has no default credentials."""
    with pytest.raises(ServerStartError) as caught:
        NatsServer(data_dir=tmp_path / "nats", config_file=NATS_CONFIG, start_timeout=5).start()
    assert "EAF_NATS_" in caught.value.log_tail
    with pytest.raises(ServerError, match="admin"):
        nats_environment({user: "pw" for user in NATS_USERS if user != "admin"})
    env = nats_environment(dict.fromkeys(NATS_USERS, 'p"w#1'))
    assert env[nats_password_variable("observer")] == '"p\\"w#1"'  # a quoted config string

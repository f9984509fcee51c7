"""The local stack behind ``edgeaiforge up | down | status``.

``up`` starts what is missing — ``nats-server -js``, Mosquitto with the project's config,
``influxd`` — with their data under ``stack.data_dir`` (``./var``), then every service as
its own process (``python -m services.<name>``), logs under ``var/log/``, and waits until
each answers its health check. ``down`` stops only what ``up`` started: every process is
recorded in ``var/run/<name>.json`` with its pid, command line and start time, and is
signalled only if the live process still is that one; ``down`` returns once it is gone.
A process is judged dead only once it is gone, never because its command line does not
show yet (between fork and exec). The same records serve other long-lived processes of
the stack (the simulated fleet), so ``status`` shows them and ``down`` stops them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import aiomqtt

# Not `import nats`: the repository's nats/ directory (server config) would shadow it for
# the import sorter.
from edgeaiforge_stack.health import check_services, extra_rows
from edgeaiforge_stack.layout import (
    HEALTH_TIMEOUT,
    MQTT_ADMIN_USER,
    SERVERS,
    SERVICE_MQTT_USER,
    SERVICES,
    ComponentStatus,
    StackError,
    StackLayout,
    api_url,
    extras,
    port_open,
    server_endpoints,
    service_ports,
)
from edgeaiforge_stack.processes import (
    STOP_GRACE,
    Stopped,
    alive,
    cmdline,
    process_running,
    spawn,
    start_time,
    stop_process,
    stop_processes,
)
from edgeaiforge_stack.servers import (
    InfluxServer,
    MosquittoServer,
    NatsServer,
    ServerError,
    nats_service_environment,
)
from schemas.config import Settings
from services.common.keys import KeyFileError, load_kek, load_signing_key
from services.common.mqtt_admin import (
    SERVICE_ROLE,
    DynsecAlreadyExistsError,
    MqttAdmin,
    MqttAdminError,
    provision_platform,
)

# The stack's public names, wherever they are defined, so callers import from one place.
__all__ = [
    "HEALTH_TIMEOUT",
    "SERVERS",
    "SERVICES",
    "STOP_GRACE",
    "ComponentStatus",
    "StackError",
    "StackLayout",
    "Stopped",
    "alive",
    "api_url",
    "as_json",
    "down",
    "extras",
    "process_running",
    "service_environment",
    "spawn",
    "start_time",
    "status",
    "stop_process",
    "stop_processes",
    "up",
]


# ---- servers ---------------------------------------------------------------------------


class _Logged:
    """Mixin: the server's output goes to ``var/log/<name>.log``, like the services'."""

    log_file: Path

    @property
    def log_path(self) -> Path:
        return self.log_file


class _Nats(_Logged, NatsServer):
    pass


class _Mosquitto(_Logged, MosquittoServer):
    pass


class _Influx(_Logged, InfluxServer):
    pass


def _make_server(
    name: str, settings: Settings, layout: StackLayout
) -> NatsServer | MosquittoServer | InfluxServer:
    host, port, _ = server_endpoints(settings)[name]
    data_dir = layout.root / name
    server: _Nats | _Mosquitto | _Influx
    if name == "nats":
        # The project's config (nats/nats-server.conf): one user per service.
        server = _Nats(data_dir=data_dir, host=host, port=port, passwords=layout.nats_passwords())
    elif name == "mosquitto":
        server = _Mosquitto(
            data_dir=data_dir,
            host=host,
            port=port,
            admin_username=MQTT_ADMIN_USER,
            admin_password=layout.secret("mosquitto-admin"),
        )
    else:
        server = _Influx(data_dir=data_dir, host=host, port=port, start_timeout=30.0)
    layout.logs.mkdir(parents=True, exist_ok=True)
    server.log_file = layout.log(name)
    return server


def _start_server(name: str, settings: Settings, layout: StackLayout) -> ComponentStatus:
    host, port, key = server_endpoints(settings)[name]
    record = layout.read_record(name)
    if process_running(record):
        return ComponentStatus(
            name, "server", record["pid"], True, port_open(host, port), f"{host}:{port}"
        )
    if port_open(host, port):
        raise StackError(
            name,
            f"port {port} on {host} is in use by a process that `edgeaiforge up` did not "
            f"start; stop that process, or change {key} in the configuration",
        )
    server = _make_server(name, settings, layout)
    try:
        server.start()
    except ServerError as exc:
        raise StackError(name, str(exc)) from None
    assert server.pid is not None
    layout.write_record(name, server.pid, cmdline(server.pid) or [], started=start_time(server.pid))
    return ComponentStatus(name, "server", server.pid, True, True, f"{host}:{port}")


async def _provision_mqtt(settings: Settings, layout: StackLayout) -> None:
    """Deny-by-default ACLs, the services' role, and the services' broker account."""
    async with MqttAdmin(
        hostname=settings.mqtt.host,
        port=settings.mqtt.port,
        username=MQTT_ADMIN_USER,
        password=layout.secret("mosquitto-admin"),
    ) as admin:
        await provision_platform(admin, prefix=settings.mqtt.topic_prefix)
        with contextlib.suppress(DynsecAlreadyExistsError):
            await admin.create_client(
                SERVICE_MQTT_USER,
                layout.secret("mqtt-services"),
                roles=[{"rolename": SERVICE_ROLE}],
            )


# ---- services --------------------------------------------------------------------------


def service_environment(settings: Settings, layout: StackLayout, name: str) -> dict[str, str]:
    """The environment of service ``name``: its own NATS user, the broker accounts made by
    ``up``, on top of ours."""
    env = dict(os.environ)
    env.update(
        {
            **nats_service_environment(name, layout.nats_passwords()[name]),
            # Set only when the file leaves them empty: a user's own accounts win.
            **(
                {}
                if settings.mqtt.username
                else {
                    "EAF_MQTT__USERNAME": SERVICE_MQTT_USER,
                    "EAF_MQTT__PASSWORD": layout.secret("mqtt-services"),
                }
            ),
            **(
                {}
                if settings.deployer.admin_username
                else {
                    "EAF_DEPLOYER__ADMIN_USERNAME": MQTT_ADMIN_USER,
                    "EAF_DEPLOYER__ADMIN_PASSWORD": layout.secret("mosquitto-admin"),
                }
            ),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _start_service(
    name: str, settings: Settings, layout: StackLayout, config_path: Path
) -> ComponentStatus:
    record = layout.read_record(name)
    if process_running(record):
        return ComponentStatus(name, "service", record["pid"], True, False, "already running")
    port = service_ports(settings).get(name)
    if port is not None and port_open(port[0], port[1]):
        raise StackError(
            name,
            f"port {port[1]} on {port[0]} is in use by a process that `edgeaiforge up` did not "
            f"start; stop that process, or change {port[2]} in the configuration",
        )
    argv = [sys.executable, "-m", f"services.{name}", "--config", str(config_path.resolve())]
    pid = spawn(layout, name, argv, env=service_environment(settings, layout, name))
    return ComponentStatus(name, "service", pid, True, False, "starting")


# ---- commands --------------------------------------------------------------------------


def up(
    settings: Settings, config_path: Path, *, wait: float = HEALTH_TIMEOUT
) -> list[ComponentStatus]:
    """Start what is missing and wait until every component answers its health check.

    Raises ``StackError`` when a server cannot start or a port belongs to someone else;
    services that do not answer in time are returned unhealthy (their log says why).
    """
    layout = StackLayout.of(settings)
    statuses = [_start_server(name, settings, layout) for name in SERVERS]
    try:
        asyncio.run(_provision_mqtt(settings, layout))
    except (MqttAdminError, aiomqtt.MqttError, OSError) as exc:
        raise StackError(
            "mosquitto",
            f"could not set up the broker's accounts ({exc}); if {layout.root / 'mosquitto'} "
            "was made by another configuration, remove that directory and run up again",
        ) from None
    try:
        # Made here, once, before the services start: several services starting together
        # in development mode would each generate (and one would lose) its own key.
        load_kek(settings.security)
        load_signing_key(settings.security)
    except KeyFileError as exc:
        raise StackError("keys", str(exc)) from None
    fresh = [
        name
        for name in SERVICES
        if _start_service(name, settings, layout, config_path).detail == "starting"
    ]
    statuses += asyncio.run(check_services(settings, layout, SERVICES, wait, fresh))
    return statuses + extra_rows(layout)


def status(settings: Settings) -> list[ComponentStatus]:
    """Every component: running (and ours) and answering."""
    layout = StackLayout.of(settings)
    result = []
    for name in SERVERS:
        host, port, _ = server_endpoints(settings)[name]
        record = layout.read_record(name)
        running = process_running(record)
        if running:
            detail = f"{host}:{port}"
        elif port_open(host, port):
            detail = f"{host}:{port} is answered by a process that up did not start"
        else:
            detail = "not running"
        result.append(
            ComponentStatus(
                name,
                "server",
                record["pid"] if record else None,
                running,
                running and port_open(host, port),
                detail,
            )
        )
    result += asyncio.run(check_services(settings, layout, SERVICES, 0))
    return result + extra_rows(layout)


def down(settings: Settings, *, grace: float = STOP_GRACE) -> list[Stopped]:
    """Stop what ``up`` started, nothing else, and return once it is gone.

    The fleet first, then the services, then the servers; the processes of each phase are
    stopped together (SIGTERM, SIGKILL after ``grace`` seconds).
    """
    layout = StackLayout.of(settings)
    stopped: list[Stopped] = []
    for phase in (extras(layout), list(reversed(SERVICES)), list(reversed(SERVERS))):
        stopped += stop_processes(layout, phase, grace=grace)
    return stopped


def as_json(statuses: Sequence[ComponentStatus]) -> str:
    """``status --json``: overall health and one object per component."""
    return json.dumps(
        {
            "healthy": all(s.healthy for s in statuses),
            "components": [asdict(s) for s in statuses],
        },
        indent=2,
    )

"""The local stack behind ``edgeaiforge up | down | status``.

``up`` starts what is missing — ``nats-server -js``, Mosquitto with the project's config,
``influxd`` — with their data under ``stack.data_dir`` (``./var``), then every service as
its own process (``python -m services.<name>``), logs under ``var/log/``, and waits until
each answers its health check. ``down`` stops only what ``up`` started: every process is
recorded in ``var/run/<name>.json`` with its pid and command line, and is signalled only
if the live process still has that command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import nats

from edgeaiforge._servers import InfluxServer, MosquittoServer, NatsServer, ServerError
from schemas.config import Settings
from services.common.mqtt_admin import (
    SERVICE_ROLE,
    DynsecAlreadyExistsError,
    MqttAdmin,
    provision_platform,
)

__all__ = [
    "SERVERS",
    "SERVICES",
    "ComponentStatus",
    "StackError",
    "down",
    "status",
    "up",
]

SERVERS = ("nats", "mosquitto", "influxdb")
#: Started in this order; the API last, so it finds the others answering.
SERVICES = ("registry", "validator", "analyzer", "deployer", "ingester", "tracker", "api")
SERVICE_MQTT_USER = "eaf-services"
_HEALTH_TIMEOUT = 60.0


class StackError(Exception):
    """The stack cannot be brought up as configured; the message says what to change."""


@dataclass
class ComponentStatus:
    name: str
    kind: str  # "server" or "service"
    pid: int | None
    running: bool
    healthy: bool
    detail: str = ""


@dataclass(frozen=True)
class _Layout:
    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    def record(self, name: str) -> Path:
        return self.run / f"{name}.json"


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(record: dict[str, Any]) -> bool:
    """Whether the recorded process still runs *and* is the one we started."""
    live = _cmdline(int(record["pid"]))
    return live is not None and live == record["argv"]


def _read_record(layout: _Layout, name: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(layout.record(name).read_text())
    except (OSError, ValueError):
        return None
    return data


def _write_record(layout: _Layout, name: str, pid: int, argv: list[str], **extra: Any) -> None:
    layout.run.mkdir(parents=True, exist_ok=True)
    layout.record(name).write_text(json.dumps({"pid": pid, "argv": argv, **extra}))


def _secret(layout: _Layout, name: str) -> str:
    """A generated secret kept under ``var/secrets`` (mode 0600), the same on every run."""
    path = layout.secrets / name
    if path.exists():
        return path.read_text().strip()
    layout.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


# ---- servers -------------------------------------------------------------------------


def _server_endpoints(settings: Settings) -> dict[str, tuple[str, int, str]]:
    nats_host, nats_port = _host_port(settings.nats.url, 4222)
    influx_host, influx_port = _host_port(settings.influxdb.url, 8086)
    return {
        "nats": (nats_host, nats_port, "nats.url"),
        "mosquitto": (settings.mqtt.host, settings.mqtt.port, "mqtt.host / mqtt.port"),
        "influxdb": (influx_host, influx_port, "influxdb.url"),
    }


def _start_server(name: str, settings: Settings, layout: _Layout) -> ComponentStatus:
    host, port, key = _server_endpoints(settings)[name]
    record = _read_record(layout, name)
    if record is not None and _alive(record):
        return ComponentStatus(name, "server", record["pid"], True, _port_open(host, port))
    if _port_open(host, port):
        raise StackError(
            f"{name}: port {port} on {host} is in use by a process that `edgeaiforge up` did "
            f"not start; stop it, or change {key} in the configuration"
        )
    data_dir = layout.root / name
    server: NatsServer | MosquittoServer | InfluxServer
    if name == "nats":
        server = NatsServer(data_dir=data_dir, host=host, port=port)
    elif name == "mosquitto":
        server = MosquittoServer(
            data_dir=data_dir,
            host=host,
            port=port,
            admin_password=_secret(layout, "mosquitto-admin"),
        )
    else:
        server = InfluxServer(data_dir=data_dir, host=host, port=port)
    try:
        server.start()
    except ServerError as exc:
        raise StackError(f"{name}: {exc}") from None
    assert server.pid is not None
    argv = _cmdline(server.pid) or []
    _write_record(layout, name, server.pid, argv, log=str(server.log_path))
    if name == "mosquitto":
        asyncio.run(_provision_mqtt(settings, layout))
    return ComponentStatus(name, "server", server.pid, True, True, f"{host}:{port}")


async def _provision_mqtt(settings: Settings, layout: _Layout) -> None:
    """Deny-by-default ACLs, the services' role, and the services' broker account."""
    async with MqttAdmin(
        hostname=settings.mqtt.host,
        port=settings.mqtt.port,
        username="eaf-admin",
        password=_secret(layout, "mosquitto-admin"),
    ) as admin:
        await provision_platform(admin, prefix=settings.mqtt.topic_prefix)
        with contextlib.suppress(DynsecAlreadyExistsError):
            await admin.create_client(
                SERVICE_MQTT_USER,
                _secret(layout, "mqtt-services"),
                roles=[{"rolename": SERVICE_ROLE}],
            )


# ---- services ------------------------------------------------------------------------


def _service_env(settings: Settings, layout: _Layout) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "EAF_MQTT__USERNAME": SERVICE_MQTT_USER,
            "EAF_MQTT__PASSWORD": _secret(layout, "mqtt-services"),
            "EAF_MQTT_ADMIN_USERNAME": "eaf-admin",
            "EAF_MQTT_ADMIN_PASSWORD": _secret(layout, "mosquitto-admin"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _start_service(
    name: str, settings: Settings, layout: _Layout, config_path: Path
) -> ComponentStatus:
    record = _read_record(layout, name)
    if record is not None and _alive(record):
        return ComponentStatus(name, "service", record["pid"], True, False, "already running")
    layout.logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", f"services.{name}", "--config", str(config_path.resolve())]
    with (layout.logs / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_service_env(settings, layout),
            start_new_session=True,
        )
    time.sleep(0.2)
    _write_record(layout, name, process.pid, _cmdline(process.pid) or argv)
    return ComponentStatus(name, "service", process.pid, True, False, "starting")


async def _service_healthy(name: str, settings: Settings, nc: Any) -> tuple[bool, str]:
    if name == "api":
        api = getattr(settings, "api", None)
        host = getattr(api, "host", "127.0.0.1")
        port = getattr(api, "port", 8080)
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                r = await client.get(f"http://{host}:{port}/healthz")
            return r.status_code == 200, f"http://{host}:{port}"
        except httpx.HTTPError as exc:
            return False, f"http://{host}:{port}: {type(exc).__name__}"
    if nc is None:
        return False, "bus unreachable"
    try:
        reply = await nc.request(f"eaf.rpc.{name}.health", b"{}", timeout=2.0)
        return json.loads(reply.data).get("status") == "ok", "answers on the bus"
    except Exception as exc:
        return False, f"no health answer ({type(exc).__name__})"


async def _check_services(
    settings: Settings, layout: _Layout, names: tuple[str, ...], wait: float
) -> list[ComponentStatus]:
    nc: Any = None
    with contextlib.suppress(Exception):
        nc = await nats.connect(
            settings.nats.url,
            user=settings.nats.user,
            password=settings.nats.password.get_secret_value() if settings.nats.password else None,
            connect_timeout=2,
            max_reconnect_attempts=0,
            allow_reconnect=False,
        )
    try:
        deadline = time.monotonic() + wait
        results: dict[str, ComponentStatus] = {}
        pending = list(names)
        while True:
            for name in list(pending):
                record = _read_record(layout, name)
                running = record is not None and _alive(record)
                pid = record["pid"] if record else None
                if not running:
                    log = layout.logs / f"{name}.log"
                    results[name] = ComponentStatus(
                        name, "service", pid, False, False, f"not running (see {log})"
                    )
                    pending.remove(name)
                    continue
                healthy, detail = await _service_healthy(name, settings, nc)
                results[name] = ComponentStatus(name, "service", pid, True, healthy, detail)
                if healthy:
                    pending.remove(name)
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        return [results[n] for n in names]
    finally:
        if nc is not None:
            await nc.close()


# ---- commands ------------------------------------------------------------------------


def up(settings: Settings, config_path: Path) -> list[ComponentStatus]:
    """Start what is missing and wait until everything answers."""
    layout = _Layout(settings.stack.data_dir)
    statuses = [_start_server(name, settings, layout) for name in SERVERS]
    for name in SERVICES:
        _start_service(name, settings, layout, config_path)
    statuses += asyncio.run(_check_services(settings, layout, SERVICES, _HEALTH_TIMEOUT))
    return statuses


def status(settings: Settings) -> list[ComponentStatus]:
    """Every component: running (ours) and answering."""
    layout = _Layout(settings.stack.data_dir)
    result = []
    for name in SERVERS:
        host, port, _ = _server_endpoints(settings)[name]
        record = _read_record(layout, name)
        running = record is not None and _alive(record)
        result.append(
            ComponentStatus(
                name,
                "server",
                record["pid"] if record else None,
                running,
                running and _port_open(host, port),
                f"{host}:{port}",
            )
        )
    result += asyncio.run(_check_services(settings, layout, SERVICES, 0))
    return result


def down(settings: Settings) -> list[str]:
    """Stop what ``up`` started (services first), and nothing else."""
    layout = _Layout(settings.stack.data_dir)
    stopped = []
    for name in (*reversed(SERVICES), *reversed(SERVERS)):
        record = _read_record(layout, name)
        if record is None:
            continue
        if _alive(record):
            pid = int(record["pid"])
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(record) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(record):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            stopped.append(name)
        layout.record(name).unlink(missing_ok=True)
    return stopped


def as_json(statuses: list[ComponentStatus]) -> str:
    return json.dumps([asdict(s) for s in statuses], indent=2)

"""Where the local stack keeps its state, what it is made of, and where each part answers."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgeaiforge_stack.servers import NATS_USERS, generate_nats_passwords
from schemas.config import Settings

__all__ = [
    "HEALTH_TIMEOUT",
    "MQTT_ADMIN_USER",
    "SERVERS",
    "SERVICES",
    "SERVICE_MQTT_USER",
    "ComponentStatus",
    "StackError",
    "StackLayout",
    "api_url",
    "extras",
    "host_port",
    "port_open",
    "server_endpoints",
    "service_ports",
]

SERVERS = ("nats", "mosquitto", "influxdb")
#: Started in this order; the API last, so it finds the registry answering. Any other
#: recorded process (``fleet simulate --background``) is shown by status and stopped first.
SERVICES = ("registry", "validator", "analyzer", "deployer", "ingester", "tracker", "api")
MQTT_ADMIN_USER = "eaf-admin"
SERVICE_MQTT_USER = "eaf-services"
HEALTH_TIMEOUT = 90.0


class StackError(Exception):
    """The stack cannot be brought up as configured; the message says what to change."""

    def __init__(self, component: str, reason: str) -> None:
        self.component = component
        self.reason = reason
        super().__init__(f"{component}: {reason}")


@dataclass
class ComponentStatus:
    """One row of ``edgeaiforge status``."""

    name: str
    kind: str  # "server", "service" or "process"
    pid: int | None
    running: bool
    healthy: bool
    detail: str = ""


@dataclass(frozen=True)
class StackLayout:
    """Where the stack keeps its state: ``root`` is ``stack.data_dir``."""

    root: Path

    @classmethod
    def of(cls, settings: Settings) -> StackLayout:
        return cls(settings.stack.data_dir.resolve())

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

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def secret(self, name: str) -> str:
        """A generated secret kept in ``secrets/<name>`` (mode 0600), the same on every run."""
        path = self.secrets / name
        if path.exists():
            return path.read_text().strip()
        self.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        return value

    def nats_passwords(self) -> dict[str, str]:
        """One password per user of the project's NATS config, made once, kept 0600."""
        path = self.secrets / "nats-passwords.json"
        try:
            known: dict[str, str] = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        if all(known.get(user) for user in NATS_USERS):
            return known
        # New users (a newer config) get passwords; existing ones keep theirs.
        merged = {**generate_nats_passwords(), **{k: v for k, v in known.items() if v}}
        self.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(merged, f, indent=2)
        tmp.replace(path)
        return merged

    def nats_login(self) -> tuple[str, str]:
        """The NATS admin's user and password: for status checks and operator tools."""
        return "admin", self.nats_passwords()["admin"]

    def read_record(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.record(name).read_text())
        except (OSError, ValueError):
            return None
        return data

    def write_record(self, name: str, pid: int, argv: Sequence[str], **extra: Any) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        tmp = self.record(name).with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": pid, "argv": list(argv), **extra}))
        tmp.replace(self.record(name))


# ---- processes -------------------------------------------------------------------------


# ---- endpoints ---------------------------------------------------------------------------


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def server_endpoints(settings: Settings) -> dict[str, tuple[str, int, str]]:
    nats_host, nats_port = host_port(settings.nats.url, 4222)
    influx_host, influx_port = host_port(settings.influxdb.url, 8086)
    return {
        "nats": (nats_host, nats_port, "nats.url"),
        "mosquitto": (settings.mqtt.host, settings.mqtt.port, "mqtt.port"),
        "influxdb": (influx_host, influx_port, "influxdb.url"),
    }


def service_ports(settings: Settings) -> dict[str, tuple[str, int, str]]:
    ports = {"api": (settings.api.host, settings.api.port, "api.port")}
    if settings.ingester.metrics_port:
        ports["ingester"] = (
            settings.ingester.metrics_host,
            settings.ingester.metrics_port,
            "ingester.metrics_port",
        )
    return ports


def api_url(settings: Settings) -> str:
    """Where the local stack's REST API answers."""
    host = settings.api.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reading the setting, not binding
        host = "127.0.0.1"
    return f"http://{host}:{settings.api.port}"


def extras(layout: StackLayout) -> list[str]:
    """Recorded processes other than the servers and services (the simulated fleet)."""
    known = {*SERVERS, *SERVICES}
    return sorted(p.stem for p in layout.run.glob("*.json") if p.stem not in known)

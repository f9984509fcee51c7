"""Shared pieces of the benchmarks: servers, timing, MQTT users, the results table."""

from __future__ import annotations

import asyncio
import json
import platform
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from edgeaiforge_stack.servers import InfluxServer, MosquittoServer, NatsServer
from services.common.mqtt_admin import SERVICE_ROLE, MqttAdmin, provision_platform

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Servers:
    nats: NatsServer
    mosquitto: MosquittoServer
    influx: InfluxServer
    service_user: tuple[str, str] = ("", "")

    async def mqtt_user(
        self, roles: list[str] | None = None, acls: list[Any] | None = None
    ) -> tuple[str, str]:
        """A fresh broker account with the given roles (default: the services' role)."""
        name = f"bench-{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(16)
        async with MqttAdmin(
            hostname=self.mosquitto.host,
            port=self.mosquitto.port,
            username=self.mosquitto.admin_username,
            password=self.mosquitto.admin_password,
        ) as admin:
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
def servers(workdir: Path) -> Iterator[Servers]:
    with (
        NatsServer(data_dir=workdir / "nats") as nats,
        MosquittoServer(data_dir=workdir / "mosquitto") as mosquitto,
        InfluxServer(data_dir=workdir / "influxdb") as influx,
    ):

        async def provision() -> None:
            async with MqttAdmin(
                hostname=mosquitto.host,
                port=mosquitto.port,
                username=mosquitto.admin_username,
                password=mosquitto.admin_password,
            ) as admin:
                await provision_platform(admin)

        asyncio.run(provision())
        s = Servers(nats, mosquitto, influx)
        s.service_user = asyncio.run(s.mqtt_user())
        yield s


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class Result:
    key: str
    what: str
    value: float
    goal: str
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        op, _, target = self.goal.partition(" ")
        return self.value >= float(target) if op == ">=" else self.value <= float(target)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_table(results: list[Result]) -> None:
    print()
    print(f"{'key':<20} {'ratio':>8}  {'goal':<7} {'met':<4} what")
    print("-" * 100)
    for r in results:
        print(f"{r.key:<20} {r.value:>8.3f}  {r.goal:<7} {'yes' if r.met else 'no':<4} {r.what}")
    print()


def write_results(results: list[Result], path: Path) -> None:
    data: dict[str, Any] = {r.key: round(r.value, 4) for r in results}
    data["raw"] = {r.key: {"what": r.what, "goal": r.goal, **r.raw} for r in results}
    data["machine"] = machine()
    path.write_text(json.dumps(data, indent=2) + "\n")

"""Every service, run as ``python -m services.<name>`` against the real servers, stops on
SIGTERM within seconds with one log line, and logs nothing at INFO while idle.

The servers are started the way ``edgeaiforge up`` starts them (``edgeaiforge_stack.stack``),
and the services get the environment ``up`` gives them; only the services are started
here, as our children, so their exit status can be read.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeaiforge_stack import stack as _stack
from edgeaiforge_stack.servers import free_port
from schemas.config import Settings
from services.common.config import load_settings
from services.common.keys import load_kek, load_signing_key

ROOT = Path(__file__).resolve().parents[2]
#: Seconds a service may take to exit after SIGTERM (it aims at two).
STOP_LIMIT = 3.0
#: Seconds of idleness, after its start, over which a service must log nothing at INFO.
IDLE = 10.0
#: Start-up of seven services at once on a small, busy machine.
START_TIMEOUT = 180.0
STOP_LINE = "service stopping"


def _config(directory: Path) -> Path:
    """The project's config with its data under ``directory`` and free ports."""
    text = (ROOT / "config" / "edgeaiforge.toml").read_text().replace('"./var', f'"{directory}')
    text = text.replace("sqlite+aiosqlite:///./var", f"sqlite+aiosqlite:///{directory}")
    for pattern, value in {
        r"nats://127\.0\.0\.1:4223": f"nats://127.0.0.1:{free_port()}",
        r"http://127\.0\.0\.1:8087": f"http://127.0.0.1:{free_port()}",
        r"(?m)^port = 1884": f"port = {free_port()}",
        r"(?m)^port = 8000": f"port = {free_port()}",
        r"(?m)^metrics_port = 9464": f"metrics_port = {free_port()}",
    }.items():
        text, count = re.subn(pattern, value, text)
        assert count == 1, pattern
    path = directory / "edgeaiforge.toml"
    path.write_text(text)
    return path


@dataclass
class Stack:
    config: Path
    settings: Settings
    layout: _stack.StackLayout


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """NATS, Mosquitto and InfluxDB as ``up`` starts them, accounts and keys made."""
    directory = tmp_path_factory.mktemp("stop")
    config = _config(directory)
    settings = load_settings(config)
    layout = _stack.StackLayout.of(settings)
    try:
        for name in _stack.SERVERS:
            _stack._start_server(name, settings, layout)
        asyncio.run(_stack._provision_mqtt(settings, layout))
        load_kek(settings.security)
        load_signing_key(settings.security)
        yield Stack(config, settings, layout)
    finally:
        _stack.down(settings)


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    output: Path
    started: float = 0.0
    lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def descendants(self) -> set[int]:
        """Its live descendants (the validator's and analyzer's sandboxed workers)."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(stat.parent.name)] = int(fields[1])
        found = {self.process.pid}
        while more := {pid for pid, parent in parents.items() if parent in found} - found:
            found |= more
        return found - {self.process.pid}

    def stop(self) -> tuple[float, list[str]]:
        """SIGTERM; the seconds until it exited and the lines it wrote after the signal."""
        before = len(self.output.read_bytes())
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_LIMIT + 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        took = time.monotonic() - began
        after = self.output.read_bytes()[before:].decode(errors="replace")
        return took, after.splitlines()


def _spawn(stack: Stack, name: str, *args: str, **env: str) -> Service:
    output = stack.layout.root / f"{name}.out"
    environment = _stack.service_environment(stack.settings, stack.layout, name)
    environment.update(env)
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}", "--config", str(stack.config), *args],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Service(name, process, output)


def _wait_for(services: list[Service], event: str) -> None:
    """Until each service has logged ``event``; records when (``Service.started``)."""
    deadline = time.monotonic() + START_TIMEOUT
    waiting = list(services)
    while waiting:
        for service in list(waiting):
            if f'"event": "{event}"' in service.text():
                service.started = time.monotonic()
                waiting.remove(service)
            elif service.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{service.name} did not log {event!r}:\n{service.text()[-3000:]}")
        time.sleep(0.1)


def _alive(pids: set[int], *, within: float) -> list[str]:
    """The command lines of ``pids`` still running after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        alive = []
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # exited; not reaped by a container's init
                alive.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
            except OSError:
                continue
        if not alive or time.monotonic() > deadline:
            return [cmd.decode(errors="replace") for cmd in alive]
        time.sleep(0.1)


def _level(line: str) -> str:
    try:
        return str(json.loads(line).get("level", "?"))
    except ValueError:  # not one of our JSON lines: a library's own output, a traceback
        return "not json"


@pytest.fixture(scope="module")
def running(stack: Stack) -> Iterator[dict[str, Service]]:
    """Every service, started and answering."""
    services = {name: _spawn(stack, name) for name in _stack.SERVICES}
    try:
        _wait_for(list(services.values()), "service started")
        yield services
    finally:
        for service in services.values():
            if service.process.poll() is None:
                service.process.kill()
                service.process.wait()


def test_idle_services_log_nothing_at_info(running: dict[str, Service]) -> None:
    # Each service's own IDLE seconds after its start: routine work (fetches that find
    # nothing, heartbeats, the tracker's checks on no data) is DEBUG.
    time.sleep(max(0.0, max(s.started for s in running.values()) + IDLE - time.monotonic()))
    noisy = {}
    for name, service in running.items():
        lines = service.text().splitlines()
        start = next(i for i, line in enumerate(lines) if '"service started"' in line)
        loud = [line for line in lines[start + 1 :] if _level(line) != "debug"]
        if loud:
            noisy[name] = loud[:5]
    assert not noisy, json.dumps(noisy, indent=1)


@pytest.mark.parametrize("name", _stack.SERVICES)
def test_sigterm_stops_service_at_once(running: dict[str, Service], name: str) -> None:
    helpers = running[name].descendants()
    took, lines = running[name].stop()

    assert running[name].process.returncode == 0, "\n".join(lines)
    # Only the service was signalled (as a user's kill would): its helpers go with it.
    assert not _alive(helpers, within=1.0)
    assert took < STOP_LIMIT, f"{name} took {took:.1f} s to stop"
    # One line, the stop line: no traceback, no library chatter, no warning.
    assert len(lines) == 1, "\n".join(lines)
    assert json.loads(lines[0])["event"] == STOP_LINE


def test_sigterm_during_start_up(stack: Stack) -> None:
    """Stopped while it waits for servers that are not there (NATS, and for the ingester
    the MQTT broker, in its reconnect back-off): the start is abandoned at once."""
    names = ("registry", "ingester", "api")
    nowhere = f"127.0.0.1:{free_port()}"
    services = [
        _spawn(
            stack,
            name,
            "--log-level",
            "DEBUG",
            EAF_NATS__URL=f"nats://{nowhere}",
            EAF_MQTT__PORT=nowhere.split(":")[1],
        )
        for name in names
    ]
    try:
        _wait_for(services, "service starting")
        time.sleep(1.5)  # into the connect loops
        for service in services:
            assert service.process.poll() is None, service.text()
            took, lines = service.stop()
            output = "\n".join(lines)
            assert service.process.returncode == 0, output
            assert took < STOP_LIMIT, f"{service.name} took {took:.1f} s to stop"
            assert "Traceback" not in output
            assert sum(STOP_LINE in line for line in lines) == 1, output
            assert not [line for line in lines if _level(line) in ("error", "not json")], output
    finally:
        for service in services:
            if service.process.poll() is None:
                service.process.kill()
                service.process.wait()

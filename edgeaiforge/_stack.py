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
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import aiomqtt
import httpx

# Not `import nats`: the repository's nats/ directory (server config) would shadow it for
# the import sorter.
from nats.aio.client import Client as NatsClient

from edgeaiforge._servers import (
    NATS_USERS,
    InfluxServer,
    MosquittoServer,
    NatsServer,
    ServerError,
    generate_nats_passwords,
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

__all__ = [
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
    "spawn",
    "start_time",
    "status",
    "stop_process",
    "stop_processes",
    "up",
]

SERVERS = ("nats", "mosquitto", "influxdb")
#: Started in this order; the API last, so it finds the registry answering. Any other
#: recorded process (``fleet simulate --background``) is shown by status and stopped first.
SERVICES = ("registry", "validator", "analyzer", "deployer", "ingester", "tracker", "api")
MQTT_ADMIN_USER = "eaf-admin"
SERVICE_MQTT_USER = "eaf-services"
HEALTH_TIMEOUT = 90.0
#: Seconds ``down`` and ``fleet stop`` wait after SIGTERM before SIGKILL.
STOP_GRACE = 10.0
#: Seconds to wait for a process to be gone after SIGKILL.
_KILL_WAIT = 5.0
#: Seconds ``spawn`` waits for a new process to show its command line.
_EXEC_TIMEOUT = 10.0


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


@dataclass(frozen=True)
class Stopped:
    """One process that ``down`` or ``fleet stop`` stopped: gone when this is returned."""

    name: str
    pid: int
    #: Seconds from SIGTERM until the process (and its helpers) were gone.
    seconds: float
    #: It outlived the grace period and was killed with SIGKILL.
    killed: bool = False
    #: False only if it survived even SIGKILL (its record stays, so status shows it).
    gone: bool = True


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # A zombie has an empty command line: it no longer runs.
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part] or None


def _stat(pid: int | str, task: str = "") -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) from ``/proc/<pid>/stat``."""
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    try:
        # The command name (field 2) may hold spaces and parentheses: split after its end.
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2]), int(fields[19])


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, it names one process
    for good, since a reused pid gets a later start time."""
    stat = _stat(pid)
    return stat[2] if stat is not None else None


def alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` still runs (any of its threads has not exited) and, given
    ``started``, is still the process that began then.

    Unlike the command line, this holds from fork to exit: a process between fork and
    exec, and one whose main thread has exited while others still run (its command line
    is empty then), both count as alive.
    """
    stat = _stat(pid)
    if stat is None or (started is not None and stat[2] != started):
        return False
    if stat[0] not in "ZX":
        return True
    try:
        tasks = [t.name for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    return any((s := _stat(pid, t)) is not None and s[0] not in "ZX" for t in tasks)


def _group_alive(group: int) -> bool:
    """Whether any live process is left in process group ``group``."""
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(entry.name)
        if stat is not None and stat[1] == group and alive(int(entry.name), stat[2]):
            return True
    return False


def process_running(record: Mapping[str, Any] | None) -> TypeGuard[Mapping[str, Any]]:
    """Whether the recorded process still runs *and* is the one we started.

    A pid alone could by now name another program; the command line must match too.
    """
    if record is None:
        return False
    live = _cmdline(int(record["pid"]))
    return live is not None and live == list(record["argv"])


def _ours_starting(record: Mapping[str, Any] | None, fresh: bool) -> bool:
    """Alive but not (yet) showing its command line: a process caught between fork and
    exec, or in the middle of exec. It is ours if we just started it, or if it still has
    the recorded start time; a record without one and a different program is a reused pid.
    """
    if record is None:
        return False
    started = record.get("started")
    if started is None and not fresh:
        return False
    return alive(int(record["pid"]), started)


def spawn(
    layout: StackLayout,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    **extra: Any,
) -> int:
    """Start ``argv`` detached (own session), output to ``log/<name>.log``, and record it.

    Returns once the process runs ``argv`` (its ``/proc`` command line shows it) or has
    exited, so what is recorded can be judged at once.
    """
    layout.logs.mkdir(parents=True, exist_ok=True)
    with layout.log(name).open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name} ---\n".encode())
        log.flush()
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    # Popen returns once exec has begun, not once it has finished: until the kernel has
    # set the new program's arguments, /proc/<pid>/cmdline is empty (or, before the exec,
    # the parent's). On a busy machine that gap is long enough to be seen.
    started = start_time(process.pid)
    deadline = time.monotonic() + _EXEC_TIMEOUT
    while process.poll() is None and _cmdline(process.pid) != list(argv):
        if time.monotonic() > deadline:
            break  # e.g. a script whose interpreter shows in its place: judged by pid
        time.sleep(0.01)
    layout.write_record(name, process.pid, argv, started=started, **extra)
    return process.pid


def stop_processes(
    layout: StackLayout, names: Sequence[str], *, grace: float = STOP_GRACE
) -> list[Stopped]:
    """Stop the recorded processes ``names`` together and return once they are gone.

    SIGTERM to each one's process group; whatever still runs ``grace`` seconds later gets
    SIGKILL. Helpers left in a group (the validator's sandboxed workers) are killed once
    their leader is gone. Records of processes that no longer run are removed; a record
    whose pid now belongs to another program is removed without a signal.
    """
    began = time.monotonic()
    # name -> (pid, start time, group to signal or None for the pid alone)
    targets: dict[str, tuple[int, int | None, int | None]] = {}
    for name in names:
        record = layout.read_record(name)
        if process_running(record) or _ours_starting(record, fresh=False):
            assert record is not None
            pid = int(record["pid"])
            stat = _stat(pid)
            # Every process was started as the leader of its own session, so its group
            # holds it and its helpers and nothing else.
            group = pid if stat is not None and stat[1] == pid else None
            targets[name] = (pid, stat[2] if stat is not None else None, group)
            _signal(pid, group, signal.SIGTERM)
        else:
            layout.record(name).unlink(missing_ok=True)
    done: dict[str, Stopped] = {}
    killed: set[str] = set()
    deadline = began + grace
    while len(done) < len(targets):
        for name, (pid, started, group) in targets.items():
            if name in done or alive(pid, started):
                continue
            if group is not None and _group_alive(group):
                # Helpers that outlived their leader (the group lives on with them, so its
                # id cannot have been given to anyone else).
                _signal(pid, group, signal.SIGKILL)
                if time.monotonic() < deadline + _KILL_WAIT:
                    continue
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
            done[name] = Stopped(name, pid, time.monotonic() - began, name in killed)
            layout.record(name).unlink(missing_ok=True)
        now = time.monotonic()
        if now >= deadline:
            for name, (pid, _, group) in targets.items():
                if name not in done and name not in killed:
                    killed.add(name)
                    _signal(pid, group, signal.SIGKILL)
        if now >= deadline + _KILL_WAIT:
            break  # not gone even after SIGKILL (uninterruptible I/O): say so below
        if len(done) < len(targets):
            time.sleep(0.05)
    for name, (pid, _, _) in targets.items():
        if name not in done:
            # Still there after SIGKILL: keep its record, so status shows it.
            done[name] = Stopped(name, pid, time.monotonic() - began, killed=True, gone=False)
    return [done[n] for n in names if n in done]


def stop_process(layout: StackLayout, name: str) -> bool:
    """Stop one recorded process (see ``stop_processes``); True if it ran."""
    return bool(stop_processes(layout, [name]))


def _signal(pid: int, group: int | None, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group is not None:
            os.killpg(group, sig)
        else:
            os.kill(pid, sig)


# ---- endpoints ---------------------------------------------------------------------------


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _server_endpoints(settings: Settings) -> dict[str, tuple[str, int, str]]:
    nats_host, nats_port = _host_port(settings.nats.url, 4222)
    influx_host, influx_port = _host_port(settings.influxdb.url, 8086)
    return {
        "nats": (nats_host, nats_port, "nats.url"),
        "mosquitto": (settings.mqtt.host, settings.mqtt.port, "mqtt.port"),
        "influxdb": (influx_host, influx_port, "influxdb.url"),
    }


def _service_ports(settings: Settings) -> dict[str, tuple[str, int, str]]:
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
    host, port, _ = _server_endpoints(settings)[name]
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
    host, port, key = _server_endpoints(settings)[name]
    record = layout.read_record(name)
    if process_running(record):
        return ComponentStatus(
            name, "server", record["pid"], True, _port_open(host, port), f"{host}:{port}"
        )
    if _port_open(host, port):
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
    layout.write_record(
        name, server.pid, _cmdline(server.pid) or [], started=start_time(server.pid)
    )
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
    port = _service_ports(settings).get(name)
    if port is not None and _port_open(port[0], port[1]):
        raise StackError(
            name,
            f"port {port[1]} on {port[0]} is in use by a process that `edgeaiforge up` did not "
            f"start; stop that process, or change {port[2]} in the configuration",
        )
    argv = [sys.executable, "-m", f"services.{name}", "--config", str(config_path.resolve())]
    pid = spawn(layout, name, argv, env=service_environment(settings, layout, name))
    return ComponentStatus(name, "service", pid, True, False, "starting")


async def _quiet(_: Exception) -> None:
    """nats-py's error callback: a connection error becomes the component's state, not a
    traceback on the console."""


async def _connect_bus(settings: Settings, layout: StackLayout) -> NatsClient | None:
    user, password = layout.nats_login()
    host, port = _host_port(settings.nats.url, 4222)
    if not _port_open(host, port):
        return None
    client = NatsClient()

    try:
        # nats-py retries a refused first connection on its own: bound it.
        await asyncio.wait_for(
            client.connect(
                settings.nats.url,
                user=user,
                password=password,
                connect_timeout=2,
                max_reconnect_attempts=0,
                allow_reconnect=False,
                error_cb=_quiet,
            ),
            timeout=5,
        )
    except Exception:
        with contextlib.suppress(Exception):
            await client.close()
        return None
    return client


async def _service_health(name: str, settings: Settings, nc: NatsClient | None) -> tuple[bool, str]:
    if name == "api":
        url = api_url(settings)
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                reply = await client.get(f"{url}/healthz")
        except httpx.HTTPError as exc:
            return False, f"{url}: {type(exc).__name__}"
        return reply.status_code == 200, url
    if nc is None:
        return False, "the bus does not answer"
    try:
        message = await nc.request(f"eaf.rpc.{name}.health", b"{}", timeout=2.0)
        answer = json.loads(message.data)
    except Exception as exc:
        return False, f"no health answer ({type(exc).__name__})"
    if answer.get("status") != "ok":
        return False, f"{answer.get('status')}: {answer.get('detail') or 'no detail'}"
    return True, f"answers on eaf.rpc.{name}.health"


_HINT_LINES = 3


def _log_hint(layout: StackLayout, name: str, prefix: str = "not running") -> str:
    """``prefix; see LOG: <its last lines>``: what the process said since it was last
    started (our own ``--- ... starting`` marker lines say nothing about why it ended)."""
    path = layout.log(name)
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    since = [line.strip() for line in lines if line.strip()]
    for i in range(len(since) - 1, -1, -1):
        if since[i].startswith("--- ") and " starting " in since[i]:
            since = since[i + 1 :]
            break
    if not since and lines:
        return f"{prefix}; it wrote nothing to {path}"
    last = " | ".join(line[:200] for line in since[-_HINT_LINES:])
    return f"{prefix}; see {path}" + (f": {last}" if last else "")


async def _check_services(
    settings: Settings,
    layout: StackLayout,
    names: Sequence[str],
    wait: float,
    fresh: Collection[str] = (),
) -> list[ComponentStatus]:
    """Ask each service for its health until all answer or ``wait`` seconds passed.

    ``fresh`` names the services just started: while one of them is alive but does not
    show its command line yet (between fork and exec, on a busy machine), it is starting,
    not dead. A service is reported not running only once its process is gone.
    """
    deadline = time.monotonic() + wait
    nc = await _connect_bus(settings, layout)
    while nc is None and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        nc = await _connect_bus(settings, layout)
    try:
        results: dict[str, ComponentStatus] = {}
        pending = list(names)
        while True:
            for name in list(pending):
                record = layout.read_record(name)
                pid = record["pid"] if record else None
                if not process_running(record):
                    if _ours_starting(record, name in fresh):
                        detail = "started; not yet running its command"
                        results[name] = ComponentStatus(name, "service", pid, True, False, detail)
                        continue
                    detail = _log_hint(layout, name) if record else "not started"
                    results[name] = ComponentStatus(name, "service", pid, False, False, detail)
                    pending.remove(name)
                    continue
                healthy, detail = await _service_health(name, settings, nc)
                results[name] = ComponentStatus(name, "service", pid, True, healthy, detail)
                if healthy:
                    pending.remove(name)
            if not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        return [results[n] for n in names]
    finally:
        if nc is not None:
            await nc.close()


def extras(layout: StackLayout) -> list[str]:
    """Recorded processes other than the servers and services (the simulated fleet)."""
    known = {*SERVERS, *SERVICES}
    return sorted(p.stem for p in layout.run.glob("*.json") if p.stem not in known)


def _extras(layout: StackLayout) -> list[ComponentStatus]:
    rows = []
    for name in extras(layout):
        record = layout.read_record(name)
        if record is None:
            continue
        running = process_running(record)
        detail = str(record.get("detail", "")) if running else _log_hint(layout, name)
        rows.append(ComponentStatus(name, "process", record["pid"], running, running, detail))
    return rows


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
    statuses += asyncio.run(_check_services(settings, layout, SERVICES, wait, fresh))
    return statuses + _extras(layout)


def status(settings: Settings) -> list[ComponentStatus]:
    """Every component: running (and ours) and answering."""
    layout = StackLayout.of(settings)
    result = []
    for name in SERVERS:
        host, port, _ = _server_endpoints(settings)[name]
        record = layout.read_record(name)
        running = process_running(record)
        if running:
            detail = f"{host}:{port}"
        elif _port_open(host, port):
            detail = f"{host}:{port} is answered by a process that up did not start"
        else:
            detail = "not running"
        result.append(
            ComponentStatus(
                name,
                "server",
                record["pid"] if record else None,
                running,
                running and _port_open(host, port),
                detail,
            )
        )
    result += asyncio.run(_check_services(settings, layout, SERVICES, 0))
    return result + _extras(layout)


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


# ---- helpers for containers (docker compose) ---------------------------------------------


async def _provision_with(settings: Settings, admin_user: str, admin_password: str) -> None:
    async with MqttAdmin(
        hostname=settings.mqtt.host,
        port=settings.mqtt.port,
        username=admin_user,
        password=admin_password,
    ) as admin:
        await provision_platform(admin, prefix=settings.mqtt.topic_prefix)
        if settings.mqtt.username and settings.mqtt.password:
            with contextlib.suppress(DynsecAlreadyExistsError):
                await admin.create_client(
                    settings.mqtt.username,
                    settings.mqtt.password.get_secret_value(),
                    roles=[{"rolename": SERVICE_ROLE}],
                )


def _container_health(name: str, settings: Settings) -> bool:
    async def ask() -> bool:
        if name == "api":
            return (await _service_health(name, settings, None))[0]
        client = NatsClient()
        password = settings.nats.password.get_secret_value() if settings.nats.password else None
        await asyncio.wait_for(
            client.connect(
                settings.nats.url,
                user=settings.nats.user,
                password=password,
                allow_reconnect=False,
                error_cb=_quiet,
                inbox_prefix=f"_INBOX.{settings.nats.user}" if settings.nats.user else "_INBOX",
            ),
            timeout=5,
        )
        try:
            return (await _service_health(name, settings, client))[0]
        finally:
            await client.close()

    try:
        return asyncio.run(ask())
    except Exception:
        return False


def main(argv: list[str] | None = None) -> None:
    """``python -m edgeaiforge._stack provision-mqtt | init-keys | health NAME``.

    One-shot steps of the docker compose stack, configured like the services
    (``--config`` and ``EAF_*``): the broker's ACL defaults and services' account (admin
    from ``deployer.admin_*``, account from ``mqtt.username``/``password``); the keys,
    made once before the services start; a service's health check.
    """
    import argparse

    from services.common.config import ConfigError, config_path_from_env, load_settings

    parser = argparse.ArgumentParser(prog="python -m edgeaiforge._stack")
    parser.add_argument("command", choices=("provision-mqtt", "init-keys", "health"))
    parser.add_argument("service", nargs="?", help="for health: the service to ask")
    parser.add_argument("--config", type=Path, default=config_path_from_env())
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.command == "init-keys":
            load_kek(settings.security)
            load_signing_key(settings.security)
        elif args.command == "provision-mqtt":
            admin_password = settings.deployer.admin_password
            if not settings.deployer.admin_username or admin_password is None:
                raise StackError("mosquitto", "set deployer.admin_username and admin_password")
            deadline = time.monotonic() + 60
            while True:
                try:
                    asyncio.run(
                        _provision_with(
                            settings,
                            settings.deployer.admin_username,
                            admin_password.get_secret_value(),
                        )
                    )
                    break
                except (MqttAdminError, aiomqtt.MqttError, OSError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
        else:
            if not args.service:
                parser.error("health needs the service's name")
            raise SystemExit(0 if _container_health(args.service, settings) else 1)
    except (ConfigError, KeyFileError, StackError, MqttAdminError, aiomqtt.MqttError) as exc:
        print(f"edgeaiforge._stack: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

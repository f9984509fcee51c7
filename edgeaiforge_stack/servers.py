"""Launchers for the real servers the platform runs on: NATS, Mosquitto and InfluxDB.

Used by the test fixtures, the benchmarks and `edgeaiforge up`. Each launcher runs one
server process with its data under a directory of its own, on a given host and port (port 0
picks a free one), waits until the server really answers and stops it again. A missing
binary is an error that names the Debian package to install.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import pwd
import secrets
import struct
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgeaiforge_stack._launcher import (
    DEFAULT_START_TIMEOUT,
    ServerError,
    ServerNotFoundError,
    ServerStartError,
    _render,
    _Server,
    _tcp_read,
    find_binary,
    free_port,
)

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "NATS_CONFIG",
    "NATS_SERVICE_USERS",
    "NATS_USERS",
    "InfluxServer",
    "MosquittoServer",
    "NatsServer",
    "ServerError",
    "ServerNotFoundError",
    "ServerStartError",
    "docker_mosquitto_config",
    "find_binary",
    "find_dynsec_plugin",
    "free_port",
    "generate_nats_passwords",
    "nats_environment",
    "nats_password_variable",
    "nats_service_environment",
    "render_mosquitto_config",
]

_DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
_DYNSEC_PLUGIN_GLOBS = (
    "/usr/lib/x86_64-linux-gnu/" + _DYNSEC_PLUGIN,
    "/usr/lib/*/" + _DYNSEC_PLUGIN,
    "/usr/lib/mosquitto/" + _DYNSEC_PLUGIN,
    "/usr/lib/*/mosquitto/" + _DYNSEC_PLUGIN,
    "/usr/lib/" + _DYNSEC_PLUGIN,
    "/usr/local/lib/" + _DYNSEC_PLUGIN,
    "/usr/local/lib/*/" + _DYNSEC_PLUGIN,
    "/opt/homebrew/lib/" + _DYNSEC_PLUGIN,
)
MOSQUITTO_TEMPLATE = (
    Path(__file__).resolve().parent.parent / "mosquitto" / "mosquitto.conf.template"
)
#: The project's nats-server config: users, roles and their subjects (docs/bus.md).
NATS_CONFIG = Path(__file__).resolve().parent.parent / "nats" / "nats-server.conf"
#: One NATS user per service, named after it; each holds only its own subjects.
NATS_SERVICE_USERS = (
    "registry",
    "validator",
    "analyzer",
    "deployer",
    "ingester",
    "tracker",
    "api",
)
#: Every user of ``NATS_CONFIG``: the services, ``integrator`` (commands and events),
#: ``observer`` (reads events) and ``admin`` (stream management, tests and tools).
NATS_USERS = (*NATS_SERVICE_USERS, "integrator", "observer", "admin")


def find_dynsec_plugin() -> str:
    """Return the path of Mosquitto's dynamic-security plugin."""
    for pattern in _DYNSEC_PLUGIN_GLOBS:
        for match in sorted(glob.glob(pattern)):
            if Path(match).is_file():
                return match
    raise ServerNotFoundError(_DYNSEC_PLUGIN, "mosquitto")


def render_mosquitto_config(
    *,
    host: str,
    port: int,
    user: str,
    data_dir: str,
    dynsec_plugin: str,
    dynsec_file: str,
    template_path: str | os.PathLike[str] | None = None,
) -> str:
    """The project's Mosquitto config (mosquitto/mosquitto.conf.template) filled in."""
    template = Path(template_path) if template_path is not None else MOSQUITTO_TEMPLATE
    return _render(
        template.read_text(),
        {
            "host": host,
            "port": str(port),
            "user": user,
            "data_dir": data_dir,
            "dynsec_plugin": dynsec_plugin,
            "dynsec_file": dynsec_file,
        },
    )


_DOCKER_HEADER = """\
# GENERATED from mosquitto.conf.template for docker compose (eclipse-mosquitto:2.0 image).
# Do not edit: change the template, then run
#   python -c "from edgeaiforge_stack.servers import docker_mosquitto_config as c; \\
#     print(c(), end='')" > mosquitto/mosquitto.conf

"""


def docker_mosquitto_config() -> str:
    """The config for the eclipse-mosquitto image: port 1883, files under /mosquitto/data."""
    return _DOCKER_HEADER + render_mosquitto_config(
        host="0.0.0.0",  # noqa: S104 - inside its container, published by compose
        port=1883,
        user="mosquitto",
        data_dir="/mosquitto/data",
        dynsec_plugin="/usr/lib/mosquitto_dynamic_security.so",
        dynsec_file="/mosquitto/data/dynamic-security.json",
    )


def nats_password_variable(user: str) -> str:
    """The environment variable ``NATS_CONFIG`` reads `user`'s password from."""
    return f"EAF_NATS_{user.upper()}_PASSWORD"


def generate_nats_passwords() -> dict[str, str]:
    """A fresh random password for every user of ``NATS_CONFIG``."""
    return {user: secrets.token_urlsafe(24) for user in NATS_USERS}


def nats_environment(passwords: Mapping[str, str]) -> dict[str, str]:
    """The variables nats-server needs to start with ``NATS_CONFIG``.

    `passwords` maps every name of ``NATS_USERS`` to its password; a missing one is an
    error here rather than a server that refuses to start. Each value is written as a
    JSON string (in double quotes) because nats-server parses a variable's value as a
    config value: unquoted, ``4e12`` would be a number and ``a#b`` a comment.
    """
    missing = [user for user in NATS_USERS if not passwords.get(user)]
    if missing:
        raise ServerError(f"no NATS password for users {missing}: every user needs one")
    return {nats_password_variable(user): json.dumps(passwords[user]) for user in NATS_USERS}


def nats_service_environment(user: str, password: str) -> dict[str, str]:
    """The variables that give a service (`python -m services.<user>`) its NATS login."""
    return {"EAF_NATS__USER": user, "EAF_NATS__PASSWORD": password}


class NatsServer(_Server):
    """`nats-server` with JetStream, its store under `data_dir`.

    `config_file` is passed as `-c`; command-line host, port and store dir still win.
    With `passwords` (one per name in ``NATS_USERS``, see ``generate_nats_passwords``) it
    runs the project's config ``NATS_CONFIG`` (unless `config_file` says otherwise): every
    client must log in, and `url` carries the admin's credentials.
    """

    name = "NATS"
    package = "nats-server"
    binary = "nats-server"

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        config_file: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = DEFAULT_START_TIMEOUT,
        passwords: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(data_dir=data_dir, host=host, port=port, start_timeout=start_timeout)
        self.passwords = dict(passwords) if passwords is not None else None
        if config_file is None and passwords is not None:
            config_file = NATS_CONFIG
        self.config_file = Path(config_file) if config_file is not None else None
        self.extra_args = tuple(extra_args)
        self._server_env = nats_environment(passwords) if passwords is not None else {}

    @property
    def url(self) -> str:
        """`nats://host:port`, with the admin's credentials when the server has users."""
        if self.passwords is not None:
            return self.url_for("admin")
        return self.plain_url

    @property
    def plain_url(self) -> str:
        """`nats://host:port` without credentials."""
        return f"nats://{self._host}:{self._port}"

    def url_for(self, user: str) -> str:
        """`nats://user:password@host:port` for one of ``NATS_USERS``."""
        return f"nats://{user}:{self.password_for(user)}@{self._host}:{self._port}"

    def password_for(self, user: str) -> str:
        """The password of `user` (a name of ``NATS_USERS``)."""
        if self.passwords is None or user not in self.passwords:
            raise ServerError(f"this NATS server has no user {user!r}")
        return self.passwords[user]

    def _environment(self) -> dict[str, str]:
        return {**os.environ, **self._server_env}

    @property
    def store_dir(self) -> Path:
        """JetStream's store directory."""
        return self.data_dir / "jetstream"

    def _command(self, executable: str) -> list[str]:
        command = [executable]
        if self.config_file is not None:
            command += ["-c", str(self.config_file)]
        command += ["-js", "-a", self._host, "-p", str(self._port), "-sd", str(self.store_dir)]
        return command + list(self.extra_args)

    def _ready(self) -> bool:
        # The server greets every connection with an INFO line once it accepts clients.
        return _tcp_read(self._host, self._port, None, 4096).startswith(b"INFO ")


class InfluxServer(_Server):
    """InfluxDB 1.x `influxd`, data, meta and WAL under `data_dir`, no usage reporting."""

    name = "InfluxDB"
    package = "influxdb"
    binary = "influxd"

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        rpc_port: int = 0,
        environment: Mapping[str, str] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(data_dir=data_dir, host=host, port=port, start_timeout=start_timeout)
        self._requested_rpc_port = rpc_port
        self._rpc_port = rpc_port
        self.environment = dict(environment or {})

    @property
    def url(self) -> str:
        """`http://host:port` of the HTTP API."""
        return f"http://{self._host}:{self._port}"

    @property
    def rpc_port(self) -> int:
        """Port of the backup/restore RPC service (bound on the same host)."""
        return self._rpc_port

    def _extra_ports(self) -> None:
        if self._requested_rpc_port == 0:
            self._rpc_port = free_port(self._host)

    def _prepare(self) -> None:
        if self._rpc_port == 0:
            self._rpc_port = free_port(self._host)

    def _command(self, executable: str) -> list[str]:
        # -config /dev/null: read no system config, only the environment below.
        return [executable, "run", "-config", os.devnull]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "INFLUXDB_DATA_DIR": str(self.data_dir / "data"),
                "INFLUXDB_META_DIR": str(self.data_dir / "meta"),
                "INFLUXDB_DATA_WAL_DIR": str(self.data_dir / "wal"),
                "INFLUXDB_HTTP_BIND_ADDRESS": f"{self._host}:{self._port}",
                "INFLUXDB_BIND_ADDRESS": f"{self._host}:{self._rpc_port}",
                "INFLUXDB_REPORTING_DISABLED": "true",
                "INFLUXDB_HTTP_LOG_ENABLED": "false",
                "INFLUXDB_DATA_QUERY_LOG_ENABLED": "false",
                "INFLUXDB_LOGGING_LEVEL": "warn",
                "INFLUXDB_MONITOR_STORE_ENABLED": "false",
            }
        )
        env.update(self.environment)
        return env

    def _ready(self) -> bool:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=1.0)
        try:
            connection.request("GET", "/ping")
            return connection.getresponse().status == 204
        except OSError:
            return False
        finally:
            connection.close()


def _current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _mqtt_connect_packet(client_id: str, username: str, password: str) -> bytes:
    """A minimal MQTT 3.1.1 CONNECT with username and password, for the readiness probe."""

    def field(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("!H", len(raw)) + raw

    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    body = field("MQTT") + bytes([4, flags]) + struct.pack("!H", 10)
    body += field(client_id) + field(username) + field(password)
    length = len(body)
    encoded = bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([0x10]) + bytes(encoded) + body


class MosquittoServer(_Server):
    """Mosquitto with the project's config: auth by the dynamic-security plugin, persistence.

    On first start the dynamic-security file is created with an admin client
    (`admin_username`/`admin_password`); later starts reuse it, so clients, roles and
    retained messages survive `stop()` then `start()`.
    """

    name = "Mosquitto"
    package = "mosquitto"
    binary = "mosquitto"

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        admin_username: str = "eaf-admin",
        admin_password: str | None = None,
        template_path: str | os.PathLike[str] | None = None,
        run_as: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(data_dir=data_dir, host=host, port=port, start_timeout=start_timeout)
        self.admin_username = admin_username
        self.admin_password = admin_password or secrets.token_urlsafe(24)
        self.template_path = Path(template_path) if template_path else MOSQUITTO_TEMPLATE
        self.run_as = run_as or _current_user()

    @property
    def url(self) -> str:
        """`mqtt://host:port`."""
        return f"mqtt://{self._host}:{self._port}"

    @property
    def config_path(self) -> Path:
        """The rendered config file."""
        return self.data_dir / "mosquitto.conf"

    @property
    def dynsec_path(self) -> Path:
        """The dynamic-security plugin's JSON file (clients, roles, ACLs)."""
        return self.data_dir / "dynamic-security.json"

    def render_config(self) -> str:
        """The project's template filled in for this instance."""
        return render_mosquitto_config(
            host=self._host,
            port=self._port,
            user=self.run_as,
            data_dir=str(self.data_dir.resolve()),
            dynsec_plugin=find_dynsec_plugin(),
            dynsec_file=str(self.dynsec_path.resolve()),
            template_path=self.template_path,
        )

    def _prepare(self) -> None:
        if not self.dynsec_path.exists():
            ctrl = find_binary("mosquitto_ctrl", package="mosquitto-clients")
            command = [ctrl, "dynsec", "init", str(self.dynsec_path), self.admin_username]
            result = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [*command, self.admin_password],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
                timeout=30,
            )
            if result.returncode != 0 or not self.dynsec_path.exists():
                output = (result.stdout + result.stderr).decode(errors="replace")
                raise ServerStartError(
                    self.name, f"mosquitto_ctrl dynsec init failed: {output.strip()}", None
                )
            # Holds password hashes: readable by the broker's user only.
            self.dynsec_path.chmod(0o600)
        self.config_path.write_text(self.render_config())

    def _command(self, executable: str) -> list[str]:
        return [executable, "-c", str(self.config_path)]

    def _ready(self) -> bool:
        # Ready means the plugin is loaded and the admin can log in: CONNACK, return code 0.
        packet = _mqtt_connect_packet(
            f"eaf-probe-{secrets.token_hex(4)}", self.admin_username, self.admin_password
        )
        reply = _tcp_read(self._host, self._port, packet, 4)
        if len(reply) < 4 or reply[0] != 0x20:
            return False
        if reply[3] != 0:
            self.stop()
            raise ServerStartError(
                self.name,
                f"the broker refused the admin client {self.admin_username!r} (CONNACK code "
                f"{reply[3]}): {self.dynsec_path} was made with other credentials; pass those, "
                "or remove the file to start afresh",
                self.log_path,
            )
        return True

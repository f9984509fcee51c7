"""Running one server process: spawn it, wait until it answers, stop it; and the errors
that say which package to install when its binary is missing."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

DEFAULT_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_LOG_TAIL_LINES = 40
# Not on PATH for a non-root user on Debian, but that is where the packages put them.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/local/bin", "/usr/bin")


class ServerError(Exception):
    """Root of the errors raised by the server launchers."""


class ServerNotFoundError(ServerError):
    """A server binary or plugin is not installed."""

    def __init__(self, name: str, package: str) -> None:
        self.name = name
        self.package = package
        super().__init__(
            f"{name} not found on PATH nor in {', '.join(_EXTRA_BIN_DIRS)}: "
            f"install the Debian package {package!r} (apt-get install {package})"
        )


class ServerStartError(ServerError):
    """A server did not start, or did not answer in time."""

    def __init__(
        self, name: str, reason: str, log_path: Path | None, *, exit_code: int | None = None
    ) -> None:
        self.name = name
        self.reason = reason
        self.exit_code = exit_code
        self.log_path = log_path
        self.log_tail = _tail(log_path) if log_path is not None else ""
        message = f"{name} did not start: {reason}"
        if log_path is not None:
            message += f"\n--- last lines of {log_path} ---\n{self.log_tail or '(empty)'}"
        super().__init__(message)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def find_binary(name: str, *, package: str) -> str:
    """Return the path of the executable `name`, looking on PATH and in the sbin dirs.

    Raises ServerNotFoundError naming `package` if it is not installed.
    """
    found = shutil.which(name)
    if found:
        return found
    for directory in _EXTRA_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerNotFoundError(name, package)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _render(template: str, values: Mapping[str, str]) -> str:
    """Fill `{{name}}` placeholders; an unknown or missing one is an error, not a blank."""
    missing = set(re.findall(r"\{\{(\w+)\}\}", template)) - set(values)
    if missing:
        raise ServerError(f"no value for placeholders {sorted(missing)} in the config template")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)


class _Server:
    """One server process: spawn, wait until ready, stop. Subclasses say how."""

    name = "server"
    package = "server"
    binary = "server"

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.start_timeout = start_timeout
        self._host = host
        self._requested_port = port
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The port the server listens on (the picked one once started, if 0 was asked)."""
        return self._port

    @property
    def url(self) -> str:
        """Where clients connect."""
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        """File that receives the server's stdout and stderr."""
        return self.data_dir / f"{self.binary}.log"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return self._process.pid if self._process is not None else None

    def _command(self, executable: str) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _prepare(self) -> None:
        """Write whatever the server needs on disk before it starts."""

    def _ready(self) -> bool:
        raise NotImplementedError

    def _extra_ports(self) -> None:
        """Pick any further ports the server binds (called after the main port is known)."""

    def start(self) -> Self:
        """Spawn the server and wait until it answers; restarting keeps the port and data."""
        if self.running:
            return self
        executable = find_binary(self.binary, package=self.package)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A port picked by us is kept for later restarts: clients reconnect to the same place.
        attempts = 3 if self._requested_port == 0 and self._port == 0 else 1
        for attempt in range(attempts):
            if self._requested_port == 0 and (self._port == 0 or attempt > 0):
                self._port = free_port(self._host)
                self._extra_ports()
            try:
                self._spawn(executable)
                return self
            except ServerStartError as error:
                # Another process may have taken the picked port between pick and bind.
                if error.exit_code is None or attempt == attempts - 1:
                    raise
        return self  # pragma: no cover - the loop returns or raises

    def _spawn(self, executable: str) -> None:
        self._prepare()
        with self.log_path.open("ab") as log:
            log.write(f"--- starting {self.name} on {self._host}:{self._port} ---\n".encode())
            log.flush()
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self._command(executable),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                cwd=self.data_dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise ServerStartError(
                    self.name, f"process exited with code {code}", self.log_path, exit_code=code
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    self.name,
                    f"no answer on {self._host}:{self._port} within {self.start_timeout:.0f} s",
                    self.log_path,
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, so it saves its state), then kill it if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"{type(self).__name__}(host={self._host!r}, port={self._port}, {state})"


def _tcp_read(host: str, port: int, payload: bytes | None, size: int) -> bytes:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            if payload:
                sock.sendall(payload)
            return sock.recv(size)
    except OSError:
        return b""

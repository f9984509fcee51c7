"""``edgeaiforge up | status | down`` as a user runs them, on a copy of the project's config.

The copy gets free loopback ports and a temporary data dir, so the test touches neither
the machine's servers nor a user's ``./var``. Processes are checked through ``/proc``:
after ``down`` nothing started by ``up`` may remain, helpers included.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgeaiforge_stack.stack import (
    SERVERS,
    SERVICES,
    StackLayout,
    down,
    process_running,
    spawn,
    status,
    stop_processes,
)
from services.common.config import load_settings
from tests.support.stack import clean_env, eaf, leftovers, stack_config


@pytest.fixture
def stack_dir(tmp_path: Path) -> Iterator[Path]:
    """A temporary stack directory; whatever the test left running is stopped after it."""
    yield tmp_path
    config = tmp_path / "edgeaiforge.toml"
    if config.exists():
        down(load_settings(config))


def test_up_status_down(stack_dir: Path) -> None:
    config = stack_config(stack_dir)

    started = eaf("up", "--config", str(config))
    assert started.returncode == 0, started.stdout + started.stderr
    for name in (*SERVERS, *SERVICES):
        assert re.search(rf"{name}\s.*healthy", started.stdout), started.stdout

    shown = eaf("status", "--json", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["healthy"] is True
    components = {c["name"]: c for c in report["components"]}
    assert set(components) == {*SERVERS, *SERVICES}
    assert all(c["running"] and c["healthy"] and c["pid"] for c in components.values())
    pids = {c["pid"] for c in components.values()}

    # NATS runs the project's config: nobody gets in without a user of its own.
    host, port = components["nats"]["detail"].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as probe:
        info = json.loads(probe.recv(4096).decode().removeprefix("INFO "))
    assert info.get("auth_required") is True
    assert (stack_dir / "var" / "log" / "registry.log").stat().st_size > 0

    # Up again: everything is reused, nothing is started twice.
    again = eaf("up", "--json", "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert {c["pid"] for c in json.loads(again.stdout)["components"]} == pids

    stopped = eaf("down", "--config", str(config))
    assert stopped.returncode == 0, stopped.stderr
    assert leftovers(pids, stack_dir) == []
    after = eaf("status", "--json", "--config", str(config))
    assert after.returncode == 1
    assert not any(c["running"] for c in json.loads(after.stdout)["components"])


def test_a_port_held_by_another_process_names_the_key(stack_dir: Path) -> None:
    config = stack_config(stack_dir)
    port = int(re.search(r"nats://127\.0\.0\.1:(\d+)", config.read_text()).group(1))  # type: ignore[union-attr]
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        result = eaf("up", "--config", str(config))
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"port {port}" in message and "nats.url" in message, message
    assert not list((stack_dir / "var" / "run").glob("*.json"))


def test_down_leaves_a_process_alone_whose_pid_was_reused(stack_dir: Path) -> None:
    config = stack_config(stack_dir)
    settings = load_settings(config)
    layout = StackLayout.of(settings)
    # A record whose pid now belongs to another program (as after a reboot).
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        layout.write_record("api", stranger.pid, ["python", "-m", "services.api"])
        assert not process_running(layout.read_record("api"))
        assert down(settings) == []
        time.sleep(0.2)
        assert stranger.poll() is None, "down killed a process it did not start"
        assert not layout.record("api").exists()
    finally:
        os.kill(stranger.pid, signal.SIGKILL)
        stranger.wait()


# ---- processes: judged alive until gone, stopped until gone ------------------------------

#: Sleeps, then execs ``sys.argv[1:]``: until then /proc shows this command line, not the
#: one recorded, as a process caught between fork and exec (or mid-exec) does.
LATE_EXEC = "import os, sys, time; time.sleep(float(os.environ['DELAY'])); os.execv(sys.argv[1], sys.argv[1:])"  # noqa: E501
#: On SIGTERM the main thread exits and another thread lives on for a while (its command
#: line reads empty then, as a zombie's does, though the process still runs).
SLOW_EXIT = """
import ctypes, os, signal, sys, threading, time
def later():
    time.sleep(float(sys.argv[1]))
    os._exit(0)
def on_term(*_):
    threading.Thread(target=later).start()
    ctypes.CDLL(None).pthread_exit(None)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(600)
"""


def runs(pid: int) -> bool:
    """Whether any thread of ``pid`` still runs, read straight from /proc."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
    return any(state not in "ZX" for state in states)


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_service_before_its_exec_is_starting_not_dead(stack_dir: Path) -> None:
    settings = load_settings(stack_config(stack_dir))
    layout = StackLayout.of(settings)
    final = [sys.executable, "-c", "import time; time.sleep(60)", "registry"]
    spawn(layout, "registry", [sys.executable, "-c", LATE_EXEC, *final], env=clean_env(DELAY="1.5"))
    record = layout.read_record("registry")
    assert record is not None
    # What up records for the service it starts: the command it will run, and when the
    # process began.
    layout.write_record("registry", record["pid"], final, started=record["started"])
    try:
        rows = {row.name: row for row in status(settings)}
        assert rows["registry"].running, rows["registry"].detail
        assert "not yet running its command" in rows["registry"].detail
        wait_until(lambda: process_running(layout.read_record("registry")))
    finally:
        stop_processes(layout, ["registry"])


def test_a_service_that_exited_is_down_with_its_last_words(stack_dir: Path) -> None:
    settings = load_settings(stack_config(stack_dir))
    layout = StackLayout.of(settings)
    said = "import sys; print('loading keys'); print('error: no key', file=sys.stderr); sys.exit(3)"
    pid = spawn(layout, "tracker", [sys.executable, "-c", said], env=clean_env())
    wait_until(lambda: not runs(pid))
    row = next(r for r in status(settings) if r.name == "tracker")
    assert not row.running
    assert "loading keys | error: no key" in row.detail, row.detail
    assert "starting tracker" not in row.detail


def test_spawn_returns_once_the_process_runs_its_command(stack_dir: Path) -> None:
    layout = StackLayout.of(load_settings(stack_config(stack_dir)))
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "fleet"]
    spawn(layout, "fleet", argv, env=clean_env())
    try:
        assert process_running(layout.read_record("fleet"))
    finally:
        assert [s.name for s in stop_processes(layout, ["fleet"])] == ["fleet"]


def test_stop_returns_once_the_process_is_gone(stack_dir: Path) -> None:
    layout = StackLayout.of(load_settings(stack_config(stack_dir)))
    pid = spawn(layout, "fleet", [sys.executable, "-c", SLOW_EXIT, "1.5"], env=clean_env())
    wait_until(lambda: "ready" in layout.log("fleet").read_text())
    [stopped] = stop_processes(layout, ["fleet"])
    assert not runs(pid), "stop returned while the process still ran"
    assert stopped.gone and not stopped.killed and stopped.seconds >= 1.4
    assert not layout.record("fleet").exists()


def test_stop_kills_what_outlives_the_grace_period(stack_dir: Path) -> None:
    layout = StackLayout.of(load_settings(stack_config(stack_dir)))
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"  # noqa: E501
    pid = spawn(layout, "fleet", [sys.executable, "-c", stubborn], env=clean_env())
    wait_until(lambda: "ready" in layout.log("fleet").read_text())
    began = time.monotonic()
    [stopped] = stop_processes(layout, ["fleet"], grace=1.0)
    assert not runs(pid)
    assert stopped.killed and stopped.gone
    assert 1.0 <= time.monotonic() - began < 5

"""Helpers for the tests that run the local stack (``edgeaiforge up`` and ``down``) in a
copy of the project's config with free ports and a temporary data dir."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from edgeaiforge_stack.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "edgeaiforge"


def stack_config(directory: Path) -> Path:
    """``config/edgeaiforge.toml`` with its paths under ``directory`` and free ports."""
    text = (ROOT / "config" / "edgeaiforge.toml").read_text()
    text = text.replace('"./var', f'"{directory / "var"}')
    text = text.replace("sqlite+aiosqlite:///./var", f"sqlite+aiosqlite:///{directory / 'var'}")
    replacements = {
        r"nats://127\.0\.0\.1:4223": f"nats://127.0.0.1:{free_port()}",
        r"http://127\.0\.0\.1:8087": f"http://127.0.0.1:{free_port()}",
        r"(?m)^port = 1884": f"port = {free_port()}",
        r"(?m)^port = 8000": f"port = {free_port()}",
        r"(?m)^metrics_port = 9464": f"metrics_port = {free_port()}",
    }
    for pattern, value in replacements.items():
        text, count = re.subn(pattern, value, text)
        assert count == 1, f"{pattern} not found once in config/edgeaiforge.toml"
    assert "./var" not in text
    path = directory / "edgeaiforge.toml"
    path.write_text(text)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without EAF_* settings a developer may have exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EAF_")}
    env.update(extra)
    return env


def eaf(*args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the ``edgeaiforge`` command."""
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(COLUMNS="200", **env),
        cwd=ROOT,
        check=False,
    )


def process_groups() -> dict[int, int]:
    """pid -> process group of every live process."""
    groups = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":  # a zombie runs nothing
            groups[int(stat.parent.name)] = int(fields[2])
    return groups


def leftovers(pids: set[int], directory: Path) -> list[str]:
    """Live processes started by the stack: in one of its groups, or naming its directory."""
    found = []
    for pid, group in process_groups().items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pid in pids or group in pids or str(directory) in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found

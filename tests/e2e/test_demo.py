"""``make demo``'s script, run twice on a fresh stack of its own, as a user would.

The first run starts the stack, uploads 1.0.0 and 1.1.0 and promotes 1.1.0; the second
reuses the stack, the key, the devices and 1.1.0, and goes on with 1.2.0. Both must exit 0
and show every step; ``down`` then leaves nothing running.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeaiforge import ModelManager
from edgeaiforge_stack.stack import StackLayout, api_url, down
from services.common.config import load_settings
from tests.support.stack import ROOT, clean_env, eaf, leftovers, stack_config

pytestmark = pytest.mark.slow


def demo(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/demo.py", "--config", str(config), "--devices", "3"],
        capture_output=True,
        text=True,
        timeout=420,
        env=clean_env(COLUMNS="160"),
        cwd=ROOT,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    path = stack_config(tmp_path)
    yield path
    down(load_settings(path))


def test_demo_runs_twice(config: Path, tmp_path: Path) -> None:
    first = demo(config)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    out = first.stdout
    for n in range(1, 11):
        assert f"{n}/10" in out, f"step {n} missing:\n{out[-3000:]}"
    assert "uploaded demo-classifier 1.0.0" in out
    assert "uploaded demo-classifier 1.1.0" in out
    assert "3 devices enrolled, 0 reused" in out
    assert "trial_inference" in out and "MACs / FLOPs" in out  # validation and analysis
    assert re.search(r"sim-001 ran\s+demo-classifier 1\.0\.0", out)
    assert "1.1.0 against 1.0.0 on sim-001" in out
    assert "demo-classifier: 1.0.0 -> 1.1.0 (production), on 3 devices" in out

    second = demo(config)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    out = second.stdout
    assert "demo-classifier 1.1.0 is already in the registry: reusing it" in out
    assert "0 devices enrolled, 3 reused" in out
    assert "reusing the admin API key" in out
    assert "demo-classifier: 1.1.0 -> 1.2.0 (production), on 3 devices" in out

    # What the user finds afterwards, through the API: every device on the promoted version.
    settings = load_settings(config)
    layout = StackLayout.of(settings)
    token = (layout.secrets / "demo-admin.token").read_text().strip()
    with ModelManager(api_url(settings), token) as mm:
        assert mm.get_model("demo-classifier").aliases["production"] == "1.2.0"
        devices = mm.list_devices(group="demo")
        assert sorted(d.device_id for d in devices) == ["sim-001", "sim-002", "sim-003"]
        assert {d.active_version for d in devices} == {"1.2.0"}

    status = json.loads(eaf("status", "--json", "--config", str(config)).stdout)
    pids = {c["pid"] for c in status["components"] if c["pid"]}
    assert {c["name"] for c in status["components"]} >= {"api", "fleet"}
    assert eaf("down", "--config", str(config)).returncode == 0
    assert leftovers(pids, tmp_path) == []

"""The three installs a user can make, each in a clean virtualenv from the project's wheel.

``pip install edgeaiforge`` is the SDK and the command: it must not pull the platform or
the device runtime. ``edgeaiforge[device]`` runs ``edge-runtime``; ``edgeaiforge[platform]``
runs the services and the local stack. The wheel is built once; pip's cache makes the
installs quick after the first run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
#: Import names of what the SDK install must not bring.
PLATFORM_ONLY = ("sqlalchemy", "faststream", "fastapi", "alembic", "structlog")
DEVICE_ONLY = ("onnxruntime", "onnx", "numpy", "aiomqtt")
#: extra -> commands that must succeed in its environment
CHECKS: dict[str, list[list[str]]] = {
    "": [["edgeaiforge", "--help"], ["python", "-c", "import edgeaiforge"]],
    "device": [["edge-runtime", "--help"]],
    "platform": [
        ["python", "-m", "services.registry", "--help"],
        ["python", "-m", "edgeaiforge_stack", "--help"],
        ["edgeaiforge", "up", "--help"],
        ["edgeaiforge", "fleet", "simulate", "--help"],
    ],
}


_NOT_SOURCE = (".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH and a directory outside the checkout: only what was installed counts.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _install(wheel: Path, extra: str, where: Path) -> Path:
    """A fresh virtualenv with the wheel (and ``extra``) installed; returns its bin dir."""
    venv.EnvBuilder(with_pip=True).create(where)
    bin_dir = where / "bin"
    target = f"{wheel}[{extra}]" if extra else str(wheel)
    done = _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", target], cwd=where)
    assert done.returncode == 0, f"pip install {target} failed:\n{done.stderr[-3000:]}"
    return bin_dir


def _missing(bin_dir: Path, modules: tuple[str, ...], cwd: Path) -> list[str]:
    """Which of ``modules`` cannot be found in the environment."""
    code = (
        "import importlib.util as u, sys; "
        "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))"
    )
    done = _run([str(bin_dir / "python"), "-c", code, *modules], cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.fixture(scope="module")
def environments(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """extra ("" for the SDK) -> bin dir of its own virtualenv."""
    root = tmp_path_factory.mktemp("distributions")
    # Built from a copy: setuptools would leave build/ in the checkout and reuse it later.
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root), str(source)],
        cwd=root,
    )
    assert built.returncode == 0, f"pip wheel failed:\n{built.stderr[-3000:]}"
    [wheel] = root.glob("edgeaiforge-*.whl")
    with ThreadPoolExecutor(len(CHECKS)) as pool:
        futures = {
            extra: pool.submit(_install, wheel, extra, root / f"venv-{extra or 'sdk'}")
            for extra in CHECKS
        }
        return {extra: future.result() for extra, future in futures.items()}


@pytest.mark.parametrize("extra", list(CHECKS), ids=["sdk", "device", "platform"])
def test_entry_points_run(environments: dict[str, Path], extra: str, tmp_path: Path) -> None:
    bin_dir = environments[extra]
    for argv in CHECKS[extra]:
        done = _run([str(bin_dir / argv[0]), *argv[1:]], cwd=tmp_path)
        assert done.returncode == 0, f"{' '.join(argv)} ({extra or 'sdk'}):\n{done.stderr}"


def test_sdk_has_neither_platform_nor_device(environments: dict[str, Path], tmp_path: Path) -> None:
    wanted = (*PLATFORM_ONLY, *DEVICE_ONLY)
    assert _missing(environments[""], wanted, tmp_path) == list(wanted)


def test_device_has_no_platform(environments: dict[str, Path], tmp_path: Path) -> None:
    assert _missing(environments["device"], PLATFORM_ONLY, tmp_path) == list(PLATFORM_ONLY)


def test_sdk_up_says_what_to_install(environments: dict[str, Path], tmp_path: Path) -> None:
    for argv in (["up"], ["fleet", "simulate", "-n", "3"]):
        done = _run([str(environments[""] / "edgeaiforge"), *argv], cwd=tmp_path)
        assert done.returncode == 1
        [line] = done.stderr.strip().splitlines()
        assert f"edgeaiforge {argv[0]}" in line
        assert "pip install 'edgeaiforge[platform]'" in line

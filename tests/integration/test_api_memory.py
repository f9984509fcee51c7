"""A 50 MB model through the API run as its own process: byte-identical both ways, and the
API's resident memory grows by far less than the file (the bytes stream, never pile up)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgeaiforge import Model, ModelManager, ModelMetadata
from tests.support.api import api_process as own_process
from tests.support.api import create_api_key, serve_in_thread
from tests.support.settings import platform_settings

SIZE = 50 * 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


class PeakRss:
    """Samples a process's RSS in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def api_process(tmp_path: Path, nats_server: Any) -> Iterator[tuple[str, str, int]]:
    settings = platform_settings(tmp_path, nats_url=nats_server.url)
    token = create_api_key(settings, role="deployer")
    with (
        serve_in_thread(settings, api=False),
        own_process(settings, tmp_path / "eaf.toml") as (url, proc),
    ):
        yield url, token, proc.pid


def write_random(path: Path, size: int) -> str:
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size // (1024 * 1024)):
            piece = os.urandom(1024 * 1024)
            sha.update(piece)
            f.write(piece)
    return sha.hexdigest()


def file_sha(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1024 * 1024):
            sha.update(piece)
    return sha.hexdigest()


def test_50_mb_round_trip_with_flat_api_memory(
    api_process: tuple[str, str, int], tmp_path: Path, unique_id: Any
) -> None:
    url, token, pid = api_process
    name = unique_id("big")
    warm = tmp_path / "warm.onnx"
    write_random(warm, 2 * 1024 * 1024)
    big = tmp_path / "big.onnx"
    digest = write_random(big, SIZE)
    with ModelManager(url, token) as mm:
        # Warm up the code paths once, so the baseline includes their imports and buffers.
        mm.add_model(Model(name, warm), ModelMetadata("t", "0.0.1"), wait=False)
        mm.download(name, "0.0.1", tmp_path / "warm.out")
        baseline = psutil.Process(pid).memory_info().rss
        with PeakRss(pid) as up:
            info = mm.add_model(Model(name, big), ModelMetadata("t", "1.0.0"), wait=False)
        with PeakRss(pid) as down:
            out = mm.download(name, "1.0.0", tmp_path / "big.out")
    assert info.artifact_id == digest and info.size_bytes == SIZE
    assert file_sha(out) == digest
    growth = max(up.peak, down.peak) - baseline
    print(
        f"API RSS baseline {baseline / 2**20:.1f} MiB; peak growth during upload "
        f"{(up.peak - baseline) / 2**20:.1f} MiB, during download "
        f"{(down.peak - baseline) / 2**20:.1f} MiB (file: {SIZE / 2**20:.0f} MiB)"
    )
    # Buffering the file would cost at least its size; streaming costs a few batches of
    # chunks plus allocator slack (measured 7-15 MiB here), whatever the file's size.
    assert growth < 0.4 * SIZE, f"API memory grew by {growth / 2**20:.1f} MiB for 50 MiB"

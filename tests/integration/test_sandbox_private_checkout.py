"""The sandbox works from a checkout that only its owner may enter.

A fresh clone under root's home or in ``mktemp -d`` lies inside a mode-0700 directory:
the worker, once it has dropped to ``nobody``, could not import what a library imports
lazily (``np.percentile`` imports ``numpy.ma``), and every model's latency went
unmeasured with a warning that blamed the model. Here the worker's interpreter runs
from a virtualenv inside such a directory, with a copy of the project's packages there
too (hard links of the installed libraries: the fastest honest copy, about 1.5 s), and
the validator and the analyzer measure a model's latency as from any other checkout.

Run as root (as CI does) this is the case that failed. Run as another user the worker
does not change users, so nothing bars it: the test then still shows that a checkout in
a private directory works.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import nats
import pytest

import edge_runtime
import modelkit
import schemas
import services
from modelkit.files import NOBODY, private_workdir
from modelkit.outcome import PLATFORM_FAULT
from modelkit.sandbox import run_task
from schemas.config import SandboxLimits, Settings
from schemas.events import ModelAnalyzed, ModelRejected, ModelUploaded, ModelValidated
from schemas.reports import AnalysisReport
from schemas.rpc import HealthRequest, health_rpc
from services.analyzer.app import create_service as create_analyzer
from services.common.artifacts import ArtifactStore
from services.common.bus import Bus
from services.common.keys import load_kek
from services.validator.app import create_service as create_validator
from tests.support.models import cnn_model, to_bytes

LIMITS = SandboxLimits(cpu_seconds=20, memory_mb=1024, wall_seconds=30)
_PACKAGES = (services, schemas, modelkit, edge_runtime)


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` as hard links of ``src``'s files (a copy where links cannot be made),
    without the project's own editable install, which points at the shared checkout."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(
        src,
        dst,
        symlinks=True,
        copy_function=link,
        ignore=shutil.ignore_patterns("__editable__*", "edgeaiforge-*.dist-info", "__pycache__"),
    )


@contextmanager
def _checkout(*, without: str = "") -> Iterator[Path]:
    """A virtualenv's interpreter inside a fresh mode-0700 directory, whose libraries and
    project packages lie there too; ``without``: a library's subpackage left out (a
    broken installation)."""
    root = Path(tempfile.mkdtemp(prefix="eaf-private-checkout-"))
    try:
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        venv = root / "venv"
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
        )
        paths = {"base": str(venv), "platbase": str(venv)}
        site = Path(sysconfig.get_paths(vars=paths)["purelib"])
        shutil.rmtree(site)
        _link_tree(Path(sysconfig.get_paths()["purelib"]), site)
        if without:
            shutil.rmtree(site.joinpath(*without.split(".")))
        src = root / "src"
        for package in _PACKAGES:
            here = Path(package.__path__[0])
            shutil.copytree(here, src / here.name, ignore=shutil.ignore_patterns("__pycache__"))
        (site / "eaf-private-checkout.pth").write_text(f"{src}\n")
        yield venv / "bin" / "python"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_checkout() -> Iterator[Path]:
    with _checkout() as python:
        yield python


@pytest.fixture
def worker_python(private_checkout: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Workers started by the services in this test run the private checkout's Python."""
    monkeypatch.setattr(sys, "executable", str(private_checkout))
    return private_checkout


@pytest.fixture
def broken_worker_python(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Workers run from a private checkout whose numpy lacks ``numpy.ma``, which
    ``np.percentile`` imports when the latency is computed."""
    with _checkout(without="numpy.ma") as python:
        monkeypatch.setattr(sys, "executable", str(python))
        yield python


async def test_a_lazy_import_after_the_drop_reads_the_private_checkout(
    worker_python: Path,
) -> None:
    async with private_workdir() as workdir:
        outcome = await run_task(
            "modelkit._selftest:lazy_import",
            {"module": "numpy.ma"},
            limits=LIMITS,
            workdir=workdir,
        )
    assert outcome.ok, outcome.describe(LIMITS, "validator")
    private = str(worker_python.parents[2])
    assert outcome.value["file"].startswith(private), outcome.value  # not the shared .venv
    assert outcome.value["uid"] == (NOBODY if os.geteuid() == 0 else os.geteuid())


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _settings(nats_url: str, tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "nats": {"url": nats_url, "retry_backoff": [0.5]},
            "model_repository": {"storage_path": str(tmp_path / "models")},
            "security": {
                "encryption_key_path": str(tmp_path / "keys" / "kek.key"),
                "signing_key_path": str(tmp_path / "keys" / "signing.pem"),
                "dev_mode": True,
            },
            "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'eaf.db'}"},
            "analyzer": {"warmup_runs": 2, "runs": 10},
        }
    )


async def test_validator_and_analyzer_measure_latency_from_a_private_checkout(
    worker_python: Path, nats_server, tmp_path: Path, unique_id
) -> None:
    settings = _settings(nats_server.url, tmp_path)
    store = ArtifactStore(
        root=tmp_path / "models",
        kek=load_kek(settings.security),
        chunk_size=settings.deployment.chunk_size,
    )
    name = unique_id("private-")
    seen: dict[str, dict[str, object]] = {}

    async def collect(msg) -> None:
        body = json.loads(msg.data)
        if body["model"] == name:
            seen.setdefault(msg.subject, body)

    nc = await nats.connect(nats_server.url)
    try:
        for subject in (ModelValidated.SUBJECT, ModelRejected.SUBJECT, ModelAnalyzed.SUBJECT):
            await nc.subscribe(subject, cb=collect)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(
                create_validator(settings, durable=unique_id("validator-"))
            )
            await stack.enter_async_context(
                create_analyzer(settings, durable=unique_id("analyzer-"))
            )
            bus = await stack.enter_async_context(Bus(settings.nats, service="test"))
            for service in ("validator", "analyzer"):  # their start-up self-tests passed
                health = await bus.call(health_rpc(service), HealthRequest())
                assert (health.status, health.detail) == ("ok", ""), service
            data = to_bytes(cnn_model())
            put = await store.put(_chunks(data))
            await bus.publish(
                ModelUploaded(
                    model=name,
                    version="1.0.0",
                    sequence=1,
                    artifact_id=put.info.artifact_id,
                    size_bytes=len(data),
                )
            )
            async with asyncio.timeout(90):
                while ModelAnalyzed.SUBJECT not in seen and ModelRejected.SUBJECT not in seen:
                    await asyncio.sleep(0.05)
    finally:
        await nc.close()
    assert ModelRejected.SUBJECT not in seen, seen[ModelRejected.SUBJECT]
    report = AnalysisReport.model_validate(seen[ModelAnalyzed.SUBJECT]["report"])
    assert report.latency is not None, report.warnings
    assert 0 < report.latency.p50_ms <= report.latency.p95_ms
    assert not [w for w in report.warnings if "latency" in w]


async def test_a_broken_installation_is_reported_at_start_and_never_blamed_on_the_model(
    broken_worker_python: Path, nats_server, tmp_path: Path, unique_id
) -> None:
    settings = _settings(nats_server.url, tmp_path)
    store = ArtifactStore(
        root=tmp_path / "models",
        kek=load_kek(settings.security),
        chunk_size=settings.deployment.chunk_size,
    )
    async with AsyncExitStack() as stack:
        service = await stack.enter_async_context(
            create_analyzer(settings, durable=unique_id("analyzer-"))
        )
        bus = await stack.enter_async_context(Bus(settings.nats, service="test"))
        # Said at start, by the service's health, before any model is analysed.
        health = await bus.call(health_rpc("analyzer"), HealthRequest())
        assert health.status == "degraded"
        assert "latency measurement is broken" in health.detail
        assert PLATFORM_FAULT in health.detail and "numpy.ma" in health.detail
        put = await store.put(_chunks(to_bytes(cnn_model())))
        report = await service.analyze(put.info.artifact_id)
    assert report.latency is None
    assert report.operators  # the profile is still there
    (warning,) = [w for w in report.warnings if w.startswith("latency not measured")]
    assert warning.startswith(f"latency not measured: {PLATFORM_FAULT}: "), warning
    assert "numpy.ma" in warning

"""An upload through the REST API flows through the validator and the analyzer, and both
reports are visible through the API within seconds; a broken upload's rejection too.
Real NATS; registry, API, validator and analyzer in-process."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import pytest

from edgeaiforge import ModelManager, ModelRejectedError
from edgeaiforge._model import Model, ModelMetadata
from schemas.reports import AnalysisReport, ValidationReport
from services.analyzer.app import create_service as create_analyzer
from services.validator.app import create_service as create_validator
from tests.support.api import create_api_key, serve_in_thread
from tests.support.models import cnn_model, to_bytes
from tests.support.settings import platform_settings


async def test_both_reports_are_visible_through_the_api(
    nats_server, tmp_path: Path, unique_id
) -> None:
    settings = platform_settings(
        tmp_path,
        nats_url=nats_server.url,
        validator={"sandbox": {"cpu_seconds": 30, "memory_mb": 2048, "wall_seconds": 30}},
        analyzer={"warmup_runs": 2, "runs": 10},
    )
    good, bad = tmp_path / "cnn.onnx", tmp_path / "broken.onnx"
    good.write_bytes(to_bytes(cnn_model()))
    bad.write_bytes(to_bytes(cnn_model())[:3000])
    name, broken = unique_id("cnn-"), unique_id("broken-")
    with serve_in_thread(settings, durable_prefix=unique_id("registry-")) as url:
        token = create_api_key(settings, role="admin")
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(
                create_validator(settings, durable=unique_id("validator-"))
            )
            await stack.enter_async_context(
                create_analyzer(settings, durable=unique_id("analyzer-"))
            )
            mm = ModelManager(url, token)
            stack.callback(mm.close)
            started = time.monotonic()
            # add_model returns once the analyzer's report is in, too.
            await asyncio.to_thread(
                partial(mm.add_model, until="analyzed"),
                Model(name, good),
                ModelMetadata("CNN", "1.0.0"),
            )
            elapsed = time.monotonic() - started
            reports = await asyncio.to_thread(mm.get_reports, name, "1.0.0")
            with pytest.raises(ModelRejectedError) as refused:
                await asyncio.to_thread(
                    mm.add_model, Model(broken, bad), ModelMetadata("x", "1.0.0")
                )
            rejected = await asyncio.to_thread(mm.get_reports, broken, "1.0.0")

    assert reports.validation is not None and reports.analysis is not None
    validation = ValidationReport.model_validate(reports.validation)
    analysis = AnalysisReport.model_validate(reports.analysis)
    assert validation.passed
    assert analysis.operators["ai.onnx::Conv"].count == 2
    assert analysis.requirements.opsets == {"ai.onnx": 17}
    assert analysis.latency is not None
    print(f"upload to both reports via the API: {elapsed:.1f} s")
    assert rejected.rejection_reason.startswith("load: not a valid ONNX protobuf")
    # The uploader's error carries the validator's failed check.
    assert refused.value.reasons[0].startswith("load: not a valid ONNX protobuf")
    first_failure = ValidationReport.model_validate(rejected.validation).first_failure
    assert first_failure is not None and first_failure.name == "load"

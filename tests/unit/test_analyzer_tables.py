"""``edgeaiforge model show`` renders both reports as tables."""

from __future__ import annotations

from rich.console import Console

from edgeaiforge._cli.reports import report_tables
from schemas.registry import VersionReports, VersionStatus
from schemas.reports import CheckOutcome, CheckResult, LatencyStats, ValidationReport
from services.analyzer.domain import analyze, diff_reports
from tests.support.models import cnn_model


def _render(reports: VersionReports) -> str:
    console = Console(record=True, width=200)
    console.print(*report_tables(reports))
    return console.export_text()


def test_reports_render_as_tables() -> None:
    before = analyze(cnn_model(classes=10))
    latency = LatencyStats(
        p50_ms=0.25, p95_ms=0.4, mean_ms=0.3, min_ms=0.2, runs=10, warmup_runs=2, threads=1
    )
    after = analyze(cnn_model(classes=5)).model_copy(update={"latency": latency})
    after = after.model_copy(update={"diff": diff_reports("1.0.0", before, after)})
    validation = ValidationReport(
        checks=(
            CheckResult(name="load", outcome=CheckOutcome.PASSED, message="ok", duration_ms=12),
            CheckResult(name="reference", outcome=CheckOutcome.SKIPPED, message="none"),
        )
    )
    text = _render(
        VersionReports(
            model="cnn",
            version="1.1.0",
            status=VersionStatus("analyzed"),
            validation=validation.model_dump(mode="json"),
            analysis=after.model_dump(mode="json"),
        )
    )
    for expected in (
        "validation", "load", "passed", "skipped", "ai.onnx::Conv", "p50 0.250 ms",
        "image: float32[batch, 3, 32, 32]", "changes since 1.0.0", "INCOMPATIBLE",
        "'logits' axis 1 changed 10 -> 5",
    ):  # fmt: skip
        assert expected in text, expected


def test_no_tables_before_the_reports_arrive() -> None:
    pending = VersionReports(model="cnn", version="1.0.0", status=VersionStatus("uploaded"))
    assert report_tables(pending) == []

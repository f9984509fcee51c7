"""Tables of a version's validation and analysis reports (``edgeaiforge model show``)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from schemas.registry import VersionReports
from schemas.reports import AnalysisReport, CheckOutcome, TensorSignature, ValidationReport

__all__ = ["analysis_tables", "report_tables", "validation_table"]

_OUTCOME_STYLE = {
    CheckOutcome.PASSED: "[green]passed[/]",
    CheckOutcome.FAILED: "[bold red]FAILED[/]",
    CheckOutcome.SKIPPED: "[dim]skipped[/]",
}


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:g}"


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:g} B"


def _signature(items: tuple[TensorSignature, ...]) -> str:
    parts = []
    for s in items:
        dims = "?" if s.shape is None else ", ".join("?" if d is None else str(d) for d in s.shape)
        parts.append(f"{s.name}: {s.dtype}[{dims}]")
    return escape("\n".join(parts))


def validation_table(report: ValidationReport) -> Table:
    """One row per check: outcome, time, message."""
    table = Table(title="validation")
    for column in ("check", "outcome", "ms", "message"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        ms = "" if check.duration_ms is None else f"{check.duration_ms:.0f}"
        table.add_row(escape(check.name), _OUTCOME_STYLE[check.outcome], ms, escape(check.message))
    return table


def analysis_tables(report: AnalysisReport) -> list[Table]:
    """Summary, operators (by FLOPs) and, when there is one, the diff."""
    summary = Table(title="analysis", show_header=False)
    latency = report.latency
    rows = [
        ("parameters", f"{_count(report.parameter_count)} ({_bytes(report.parameter_bytes)})"),
        (
            "by dtype",
            ", ".join(
                f"{p.dtype} {_count(p.count)} ({_bytes(p.bytes)})" for p in report.parameters
            ),
        ),
        ("MACs / FLOPs", f"{_count(report.macs)} / {_count(report.flops)}"),
        ("peak activations", _bytes(report.peak_activation_bytes)),
        (
            "latency (CPU)",
            f"p50 {latency.p50_ms:.3f} ms, p95 {latency.p95_ms:.3f} ms "
            f"({latency.runs} runs, {latency.threads} thread(s))"
            if latency
            else "not measured",
        ),
        ("quantization", report.quantization.scheme),
        ("inputs", _signature(report.inputs)),
        ("outputs", _signature(report.outputs)),
        ("assumed dims", ", ".join(f"{k}={v}" for k, v in report.assumed_dimensions.items())),
        ("opsets", ", ".join(f"{d} {v}" for d, v in report.requirements.opsets.items())),
        ("IR version", str(report.requirements.ir_version)),
        ("nodes", str(report.node_count)),
        ("warnings", escape("\n".join(report.warnings))),
    ]
    for key, value in rows:
        summary.add_row(key, value)

    operators = Table(title="operators")
    for column in ("operator", "count", "MACs", "FLOPs"):
        operators.add_column(column, justify="left" if column == "operator" else "right")
    for op, cost in sorted(report.operators.items(), key=lambda kv: (-kv[1].flops, kv[0])):
        operators.add_row(escape(op), str(cost.count), _count(cost.macs), _count(cost.flops))
    tables = [summary, operators]

    if report.diff is not None:
        d = report.diff
        diff = Table(title=f"changes since {d.previous_version}", show_header=False)
        change = "" if d.latency_change is None else f" ({d.latency_change:+.1%})"
        diff.add_row(
            "signature",
            "compatible"
            if d.signature_compatible
            else "[bold red]INCOMPATIBLE[/]\n" + escape("\n".join(d.signature_changes)),
        )
        diff.add_row("operators added", ", ".join(d.operators_added))
        diff.add_row("operators removed", ", ".join(d.operators_removed))
        diff.add_row("parameters", f"{_count(d.parameters_before)} -> {_count(d.parameters_after)}")
        diff.add_row("MACs", f"{_count(d.macs_before)} -> {_count(d.macs_after)}")
        if d.latency_p50_ms_before is not None and d.latency_p50_ms_after is not None:
            diff.add_row(
                "latency p50",
                f"{d.latency_p50_ms_before:.3f} -> {d.latency_p50_ms_after:.3f} ms{change}",
            )
        tables.append(diff)
    return tables


def _parse(model: type[Any], body: dict[str, Any] | None) -> Any:
    if body is None:
        return None
    try:
        return model.model_validate(body)
    except ValidationError:  # a report from a newer server: show what we can read
        return None


def report_tables(reports: VersionReports) -> list[Table]:
    """Every table for a version's reports (none while they are not there yet)."""
    tables: list[Table] = []
    validation = _parse(ValidationReport, reports.validation)
    if validation is not None:
        tables.append(validation_table(validation))
    analysis = _parse(AnalysisReport, reports.analysis)
    if analysis is not None:
        tables.extend(analysis_tables(analysis))
    return tables

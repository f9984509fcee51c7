"""``edgeaiforge stats MODEL``: inference performance per version and device, as a table."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgeaiforge._cli._common import JsonOption, console, print_json, run
from edgeaiforge._manager import ModelManager
from schemas.stats import PerformanceFigures

__all__ = ["stats"]


def _row(label: str, f: PerformanceFigures) -> list[str]:
    return [
        label,
        f"{f.count:,}",
        f"{f.error_rate:.2%}",
        f"{f.throughput:.2f}",
        f"{f.latency_p50_ms:.2f}",
        f"{f.latency_p95_ms:.2f}",
        f"{f.latency_p99_ms:.2f}",
        f"{f.latency_max_ms:.2f}",
    ]


def stats(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name")],
    window: Annotated[float, typer.Option(help="Seconds back from now")] = 3600.0,
    version: Annotated[str | None, typer.Option(help="Only this version")] = None,
    devices: Annotated[bool, typer.Option("--devices", help="A row per device too")] = False,
    json_out: JsonOption = False,
) -> None:
    """Inference performance of MODEL in the field: count, error rate, throughput (/s) and
    latency (ms) per version."""

    def action(mm: ModelManager) -> None:
        result = mm.get_model_stats(model, window=window, version=version)
        if json_out:
            print_json(result)
            return
        table = Table(
            title=f"{result.model}: {result.window_start:%Y-%m-%d %H:%M} to "
            f"{result.window_end:%H:%M} UTC"
        )
        for col in ("version / device", "count", "errors", "per s", "p50", "p95", "p99", "max"):
            table.add_column(col, justify="left" if col.startswith("version") else "right")
        for v in result.versions:
            table.add_row(*_row(v.version, v), style="bold")
            if devices:
                for d in v.devices:
                    table.add_row(*_row(f"  {d.device_id}", d))
        if not result.versions:
            console.print(f"no inference metrics for {model} in this window")
            return
        console.print(table)

    run(ctx, action)

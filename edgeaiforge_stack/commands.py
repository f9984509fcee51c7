"""``edgeaiforge up | down | status``: the local stack (servers and services) on this host.

Mounted on the ``edgeaiforge`` command through the ``edgeaiforge.commands`` entry points."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgeaiforge.commands import JsonOption, console, err_console, one_line
from edgeaiforge_stack import stack
from edgeaiforge_stack.layout import ComponentStatus, StackError, StackLayout, api_url
from edgeaiforge_stack.processes import STOP_GRACE, Stopped
from schemas.config import Settings
from services.common.config import ConfigError, config_path_from_env, load_settings

__all__ = [
    "DEFAULT_CONFIG",
    "ConfigOption",
    "down_app",
    "load",
    "print_stopped",
    "status_app",
    "up_app",
]

DEFAULT_CONFIG = Path("config/edgeaiforge.toml")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"Configuration file (default: $EAF_CONFIG, else {DEFAULT_CONFIG})",
        show_default=False,
    ),
]


def load(config: Path | None) -> tuple[Settings, Path]:
    """The settings and the file they came from; a bad file is one red line and exit 2."""
    path = config or config_path_from_env() or DEFAULT_CONFIG
    try:
        return load_settings(path), path
    except ConfigError as exc:
        message = escape(one_line(str(exc)))  # one line, even when it lists several keys
        err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _table(rows: list[ComponentStatus]) -> Table:
    table = Table(title="EdgeAIForge stack", title_justify="left")
    for column in ("component", "kind", "pid", "state", "detail"):
        table.add_column(column)
    for row in rows:
        if row.healthy:
            state = "[green]healthy[/green]"
        elif row.running:
            state = "[yellow]running, not answering[/yellow]"
        else:
            state = "[red]down[/red]"
        table.add_row(row.name, row.kind, str(row.pid or ""), state, row.detail)
    return table


def up(
    config: ConfigOption = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the health checks")] = (
        stack.HEALTH_TIMEOUT
    ),
    json_out: JsonOption = False,
) -> None:
    """Start NATS, Mosquitto, InfluxDB and every service that is not running yet."""
    settings, path = load(config)
    try:
        with err_console.status("starting the stack and waiting for health checks"):
            rows = stack.up(settings, path, wait=wait)
    except StackError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    _show(rows, json_out)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)
    if not json_out:
        console.print(
            f"API: {api_url(settings)}   logs: {StackLayout.of(settings).logs}   "
            "stop with: edgeaiforge down"
        )


def status(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """Show every component: running, healthy, where. Exit 1 unless all are healthy."""
    settings, _ = load(config)
    rows = stack.status(settings)
    _show(rows, json_out)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


def down(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """Stop what `edgeaiforge up` started, and nothing else; return once it is gone.

    Data under var/ stays. A process still running 10 s after SIGTERM is killed (SIGKILL),
    and the output says so.
    """
    settings, _ = load(config)
    began = time.monotonic()
    stopped = stack.down(settings)
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "stopped": [s.name for s in stopped if s.gone],
                    "killed": [s.name for s in stopped if s.killed],
                    "seconds": round(time.monotonic() - began, 1),
                }
            )
        )
    elif stopped:
        print_stopped(stopped, time.monotonic() - began)
    else:
        console.print("nothing of ours was running")
    if not all(s.gone for s in stopped):
        raise typer.Exit(1)


def print_stopped(stopped: list[Stopped], seconds: float) -> None:
    """``stopped: a, b (in 1.2 s)``, plus a line for each process that had to be killed
    or that even SIGKILL did not end."""
    gone = [s.name for s in stopped if s.gone]
    if gone:
        console.print(f"stopped: {', '.join(gone)} (all gone in {seconds:.1f} s)")
    for s in stopped:
        if s.killed and s.gone:
            err_console.print(
                f"[yellow]{s.name} (pid {s.pid}) did not exit within "
                f"{STOP_GRACE:.0f} s of SIGTERM: killed with SIGKILL[/yellow]",
                highlight=False,
            )
        elif not s.gone:
            err_console.print(
                f"[red]error:[/red] {s.name} (pid {s.pid}) still runs after SIGKILL; "
                "its record stays in place",
                highlight=False,
            )


def _show(rows: list[ComponentStatus], json_out: bool) -> None:
    if json_out:
        typer.echo(stack.as_json(rows))
    else:
        console.print(_table(rows))


def _single(help_text: str) -> typer.Typer:
    # A sub-app with one callback and no sub-commands: a top-level command in SUBCOMMANDS.
    return typer.Typer(help=help_text, invoke_without_command=True, no_args_is_help=False)


up_app = _single("Start the local stack: servers and services.")
up_app.callback(invoke_without_command=True)(up)
down_app = _single("Stop the local stack.")
down_app.callback(invoke_without_command=True)(down)
status_app = _single("Show the local stack's components.")
status_app.callback(invoke_without_command=True)(status)

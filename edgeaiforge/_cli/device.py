"""``edgeaiforge device list|show|token|labels|remove``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgeaiforge._cli._common import JsonOption, console, label_pairs, print_json, run
from edgeaiforge._manager import ModelManager
from schemas.deployer import DeviceList

__all__ = ["app"]

app = typer.Typer(help="Enrolled devices and enrolment tokens.", no_args_is_help=True)

DeviceId = Annotated[str, typer.Argument(metavar="DEVICE_ID", help="The device's id")]


@app.command("list")
def list_(
    ctx: typer.Context,
    group: str | None = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value; repeatable")] = None,
    online: Annotated[bool | None, typer.Option("--online/--offline")] = None,
    include_removed: Annotated[
        bool, typer.Option("--include-removed", help="Also devices removed from the fleet")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Enrolled devices."""

    def action(mm: ModelManager) -> None:
        devices = mm.list_devices(
            group=group,
            online=online,
            labels=label_pairs(label) or None,
            include_removed=include_removed,
        )
        if json_out:
            print_json(DeviceList(devices=tuple(devices)))
            return
        table = Table()
        for column in ("device", "group", "online", "model", "version", "last seen"):
            table.add_column(column)
        for d in devices:
            online_cell = "removed" if d.removed_at else "yes" if d.online else "no"
            table.add_row(
                d.device_id, d.group or "", online_cell, d.active_model or "",
                d.active_version or "",
                d.last_seen.strftime("%Y-%m-%d %H:%M:%S") if d.last_seen else "",
            )  # fmt: skip
        console.print(table)

    run(ctx, action)


@app.command()
def show(ctx: typer.Context, device_id: DeviceId, json_out: JsonOption = False) -> None:
    """One device: capabilities, active and previous model, last refusal."""

    def action(mm: ModelManager) -> None:
        d = mm.get_device(device_id)
        if json_out:
            print_json(d)
            return
        console.print(f"[bold]{d.device_id}[/bold]  online: {'yes' if d.online else 'no'}")
        if d.removed_at:
            console.print(
                f"[red]removed[/red] {d.removed_at:%Y-%m-%d %H:%M:%S} by {d.removed_by or '-'}"
                + (f": {d.removal_reason}" if d.removal_reason else "")
            )
        console.print(f"group: {d.group or '-'}  labels: {d.labels or '-'}")
        console.print(f"active: {d.active_model or '-'}@{d.active_version or '-'}")
        console.print(f"previous: {d.previous_model or '-'}@{d.previous_version or '-'}")
        caps = d.capabilities
        console.print(
            f"runtime: onnxruntime {caps.onnxruntime_version}, opsets {caps.opsets}, "
            f"{caps.cpu_arch}, {caps.memory_bytes // 2**20} MiB"
        )
        if d.last_rejection:
            console.print(f"[yellow]last refusal:[/yellow] {d.last_rejection}")

    run(ctx, action)


@app.command()
def token(
    ctx: typer.Context,
    device_id: Annotated[str | None, typer.Option(help="Only this device may use it")] = None,
    group: str | None = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value; repeatable")] = None,
    ttl: Annotated[int | None, typer.Option(help="Seconds the token stays valid")] = None,
    json_out: JsonOption = False,
) -> None:
    """Make a one-time enrolment token for `edge-runtime enroll`."""

    def action(mm: ModelManager) -> None:
        t = mm.create_enrollment_token(
            device_id=device_id, group=group, labels=label_pairs(label), ttl_seconds=ttl
        )
        print_json(t) if json_out else console.print(t.token)

    run(ctx, action)


@app.command()
def labels(
    ctx: typer.Context,
    device_id: DeviceId,
    label: Annotated[list[str] | None, typer.Option(help="key=value; replaces all labels")] = None,
    group: Annotated[str | None, typer.Option(help="New group ('' clears it)")] = None,
    json_out: JsonOption = False,
) -> None:
    """Replace a device's labels (and group)."""

    def action(mm: ModelManager) -> None:
        d = mm.set_device_labels(device_id, label_pairs(label), group=group)
        print_json(d) if json_out else console.print(f"{d.device_id}: {d.labels}")

    run(ctx, action)


@app.command()
def remove(
    ctx: typer.Context,
    device_id: DeviceId,
    reason: Annotated[str, typer.Option(help="Why (stolen, broken, replaced...)")] = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask")] = False,
    json_out: JsonOption = False,
) -> None:
    """Remove a device from the fleet (admin): the broker disconnects and refuses it, its
    unfinished deployments skip it, its metrics are refused. Safe to repeat; only a new
    token made for DEVICE_ID enrols it again."""
    if not yes and not typer.confirm(f"remove device {device_id} from the fleet?"):
        raise typer.Exit(1)

    def action(mm: ModelManager) -> None:
        d = mm.remove_device(device_id, reason=reason)
        if json_out:
            print_json(d)
            return
        when = f"{d.removed_at:%Y-%m-%d %H:%M:%S}" if d.removed_at else "-"
        console.print(f"{d.device_id}: removed {when}")

    run(ctx, action)

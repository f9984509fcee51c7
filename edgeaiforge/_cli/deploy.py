"""``edgeaiforge deploy MODEL [DEVICE]`` with a live per-device view, and
``edgeaiforge deployment list|show|pause|resume|cancel|rollback``."""

from __future__ import annotations

from typing import Annotated, Any, cast

import typer
from pydantic import TypeAdapter, ValidationError
from rich.live import Live
from rich.table import Table

from edgeaiforge._cli._common import (
    JsonOption,
    console,
    err_console,
    label_pairs,
    print_json,
    run,
)
from edgeaiforge._cli._errors import validation_message
from edgeaiforge._errors import NotFoundError
from edgeaiforge._manager import ModelManager
from schemas.deployer import DeploymentInfo, DeploymentList, DeploymentSpec, DeploymentStatus
from schemas.events import TargetState

__all__ = ["deploy", "deployment_app", "progress_table"]

deployment_app = typer.Typer(
    help="Deployments: list, show, pause, resume, cancel, rollback.", no_args_is_help=True
)

_COLOURS = {
    TargetState.ACTIVE: "green",
    TargetState.FAILED: "red",
    TargetState.ROLLED_BACK: "yellow",
    TargetState.TIMED_OUT: "red",
    TargetState.CANCELLED: "dim",
}


def progress_table(info: DeploymentInfo) -> Table:
    """One row per device: wave, state, transfer progress, detail."""
    title = (
        f"{info.model}@{info.version} · {info.status.value}"
        + (f" · {info.outcome.value}" if info.outcome else "")
        + f" · wave {info.current_wave + 1}/{len(info.waves)}"
    )
    table = Table(title=title, title_justify="left")
    for column in ("device", "wave", "state", "progress", "detail"):
        table.add_column(column)
    for t in info.targets:
        share = f"{100 * t.chunks_received / t.chunk_count:5.1f}%" if t.chunk_count else ""
        colour = _COLOURS.get(t.state, "cyan")
        table.add_row(
            t.device_id, str(t.wave + 1), f"[{colour}]{t.state.value}[/{colour}]", share, t.detail
        )
    if info.reason:
        table.caption = info.reason
    return table


DeploymentId = Annotated[str, typer.Argument(metavar="DEPLOYMENT_ID", help="From deploy or list")]

#: What the user typed for each field of a deployment request, for error messages.
_OPTION_OF = {
    "model": "MODEL",
    "version": "--version",
    "target": "DEVICE, --group or --label",
    "device_id": "DEVICE",
    "group": "--group",
    "labels": "--label",
    "waves": "--waves",
}
# The deployment's own rule for a wave size, to check --waves before any request.
_WAVES: TypeAdapter[tuple[str, ...]] = TypeAdapter(
    cast(Any, DeploymentSpec.model_fields["waves"].annotation)
)
#: Names a user may type after ``deploy`` meaning a ``deployment`` sub-command.
_DEPLOYMENT_VERBS = {"status", "list", "show", "pause", "resume", "cancel", "rollback"}


def deploy(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name")],
    device: Annotated[
        str | None,
        typer.Argument(metavar="DEVICE", help="Device id (or use --group/--label)"),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(
            "--version", "-v", help="Version or alias (default: the newest validated version)"
        ),
    ] = None,
    group: Annotated[str | None, typer.Option(help="Every device of this group")] = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value; devices with all")] = None,
    waves: Annotated[
        str | None, typer.Option(help="Roll out in waves, e.g. '1,10%,50%,100%'")
    ] = None,
    success_threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of a wave that must succeed")
    ] = 1.0,
    error_threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of a wave that may fail")
    ] = 0.0,
    auto_rollback: bool = False,
    skip_incompatible: bool = False,
    wait: Annotated[bool, typer.Option(help="Follow the rollout until it ends")] = True,
    timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds to follow it (it keeps running after)")
    ] = 3600.0,
    request_id: Annotated[
        str | None,
        typer.Option(
            "--request-id",
            help="Idempotency key: running the command again with the same key answers "
            "the deployment the first run started (default: a new key per run)",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Deploy MODEL to a device, a group or a label selector; options go before or after
    MODEL and DEVICE. Follow a deployment later with `edgeaiforge deployment show ID`."""
    labels = label_pairs(label) or None
    if sum(x is not None for x in (device, group, labels)) != 1:
        raise typer.BadParameter(
            "say where to deploy: a DEVICE, or --group G, or --label key=value (one of them)",
            param_hint="DEVICE",
        )
    wave_sizes = tuple(w.strip() for w in waves.split(",")) if waves else ("100%",)
    try:
        # Checked here, before any request, with the deployment's own rule for a wave.
        _WAVES.validate_python(wave_sizes)
    except ValidationError as exc:
        raise typer.BadParameter(
            f"{exc.errors()[0]['input']!r} is not a wave size: give device counts or "
            "percentages, e.g. 1,10%,50%,100%",
            param_hint="--waves",
        ) from None

    def action(mm: ModelManager) -> None:
        try:
            created = mm.deploy_model(
                model,
                device,
                version=version,
                group=group,
                labels=labels,
                strategy="waves" if waves else "all_at_once",
                waves=wave_sizes,
                success_threshold=success_threshold,
                error_threshold=error_threshold,
                auto_rollback=auto_rollback,
                skip_incompatible=skip_incompatible,
                request_id=request_id,
            )
        except ValidationError as exc:
            raise typer.BadParameter(validation_message(exc, _OPTION_OF)) from None
        except NotFoundError as exc:
            if model in _DEPLOYMENT_VERBS:
                verb = "show" if model == "status" else model
                raise NotFoundError(
                    exc.status,
                    exc.title,
                    f"{exc.detail}; to see or change a deployment use "
                    f"`edgeaiforge deployment {verb} ...`",
                    exc.code,
                ) from None
            raise
        final = created
        if wait and json_out:
            final = mm.wait_for_deployment(created.deployment_id, timeout=timeout)
        elif wait:
            with Live(progress_table(created), console=err_console, refresh_per_second=4) as live:
                final = mm.wait_for_deployment(
                    created.deployment_id,
                    timeout=timeout,
                    on_progress=lambda info: live.update(progress_table(info)),
                )
        if json_out:
            print_json(final)
        elif not wait:
            console.print(
                f"deployment {created.deployment_id} created; follow it with "
                f"`edgeaiforge deployment show {created.deployment_id}`"
            )
        if final.outcome is not None and final.outcome.value != "succeeded":
            raise typer.Exit(1)

    run(ctx, action)


@deployment_app.command("list")
def list_(
    ctx: typer.Context,
    model: str | None = None,
    status: Annotated[DeploymentStatus | None, typer.Option(help="Only in this state")] = None,
    device: str | None = None,
    json_out: JsonOption = False,
) -> None:
    """Deployments, newest first."""

    def action(mm: ModelManager) -> None:
        items = mm.list_deployments(
            model=model, status=status.value if status else None, device_id=device
        )
        if json_out:
            print_json(DeploymentList(deployments=tuple(items)))
            return
        table = Table()
        for column in ("id", "model", "version", "status", "outcome", "targets", "created"):
            table.add_column(column)
        for d in items:
            table.add_row(
                d.deployment_id, d.model, d.version, d.status.value,
                d.outcome.value if d.outcome else "", str(sum(d.counts.values())),
                d.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            )  # fmt: skip
        console.print(table)

    run(ctx, action)


@deployment_app.command()
def show(ctx: typer.Context, deployment_id: DeploymentId, json_out: JsonOption = False) -> None:
    """One deployment with every device's progress."""

    def action(mm: ModelManager) -> None:
        info = mm.get_deployment(deployment_id)
        print_json(info) if json_out else console.print(progress_table(info))

    run(ctx, action)


def _verb(name: str, help_text: str) -> None:
    def command(
        ctx: typer.Context, deployment_id: DeploymentId, json_out: JsonOption = False
    ) -> None:
        def action(mm: ModelManager) -> None:
            info = getattr(mm, f"{name}_deployment")(deployment_id)
            print_json(info) if json_out else console.print(progress_table(info))

        run(ctx, action)

    command.__doc__ = help_text
    deployment_app.command(name)(command)


_verb("pause", "Start no new targets; those in flight finish.")
_verb("resume", "Continue a paused deployment.")
_verb("cancel", "Cancel every unfinished target.")


@deployment_app.command()
def rollback(
    ctx: typer.Context,
    deployment_id: DeploymentId,
    request_id: Annotated[
        str | None,
        typer.Option(
            "--request-id",
            help="Idempotency key: running the command again with the same key answers "
            "the rollback the first run started (default: a new key per run)",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Return the devices to their previous model."""

    def action(mm: ModelManager) -> None:
        info = mm.rollback_deployment(deployment_id, request_id=request_id)
        print_json(info) if json_out else console.print(progress_table(info))

    run(ctx, action)

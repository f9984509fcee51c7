"""``edgeaiforge model add|list|show|download|delete|alias|reports``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeaiforge._cli._common import (
    JsonOption,
    console,
    print_json,
    progress_bar,
    run,
    upload_then_wait,
)
from edgeaiforge._cli.reports import report_tables
from edgeaiforge._manager import ModelManager
from edgeaiforge._model import Model, ModelMetadata
from edgeaiforge._registry import DEFAULT_VALIDATION_TIMEOUT, MAX_SERVER_WAIT

__all__ = ["app"]

app = typer.Typer(help="Models and their versions in the repository.", no_args_is_help=True)

Name = Annotated[str, typer.Argument(metavar="NAME", help="Model name")]
Ref = Annotated[str, typer.Argument(metavar="VERSION", help="Version or alias")]


def _version_and_file(rest: list[str], version: str | None) -> tuple[str, Path]:
    """``VERSION FILE``, or ``FILE`` with ``--version`` (both spellings stay valid)."""
    if len(rest) == 2 and version in (None, rest[0]):
        return rest[0], Path(rest[1])
    if len(rest) == 2:
        raise typer.BadParameter(
            f"the version is given twice ({rest[0]} and --version {version}): give one",
            param_hint="VERSION",
        )
    if len(rest) == 1 and version is not None:
        return version, Path(rest[0])
    if len(rest) == 1:
        raise typer.BadParameter(
            f"give the version and the file: edgeaiforge model add NAME VERSION {rest[0]}",
            param_hint="VERSION",
        )
    raise typer.BadParameter(
        f"{len(rest)} arguments after NAME; give VERSION FILE", param_hint="VERSION FILE"
    )


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@app.command()
def add(
    ctx: typer.Context,
    name: Name,
    rest: Annotated[
        list[str],
        typer.Argument(
            metavar="VERSION FILE",
            help="The semantic version and the .onnx file (FILE alone with --version)",
            show_default=False,
        ),
    ],
    version: Annotated[
        str | None,
        typer.Option("--version", "-v", help="The version, instead of the VERSION argument"),
    ] = None,
    task: Annotated[str, typer.Option(help="e.g. 'Image Classification'")] = "",
    framework: str = "",
    description: str = "",
    tag: Annotated[list[str] | None, typer.Option(help="Repeat for several")] = None,
    prop: Annotated[
        list[str] | None, typer.Option("--property", help="key=value; repeat for several")
    ] = None,
    source_url: Annotated[str, typer.Option(help="Training run or source URL")] = "",
    parent: Annotated[str | None, typer.Option(help="Parent version (lineage)")] = None,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="Return once stored, without waiting for validation"),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(min=0.0, max=MAX_SERVER_WAIT, help="Seconds to wait for the validator"),
    ] = DEFAULT_VALIDATION_TIMEOUT,
    analyzed: Annotated[
        bool, typer.Option("--analyzed", help="Also wait for the analyzer's report")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Upload a model file as a new version: NAME VERSION FILE (or NAME FILE --version V).

    Waits until the validator has passed it (a spinner), or says why it was rejected."""
    version_, path = _version_and_file(rest, version)
    properties: dict[str, str] = {}
    for item in prop or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r} is not key=value", param_hint="--property")
        properties[key] = value

    def action(mm: ModelManager) -> None:
        model = Model(name, path)
        metadata = ModelMetadata(
            task,
            version_,
            framework=framework,
            description=description,
            tags=tuple(tag or ()),
            properties=properties,
            source_url=source_url,
            parent_version=parent,
        )
        waiting = None if no_wait else f"validating {name} {version_}"
        with upload_then_wait(
            f"upload {name} {version_}", waiting, enabled=not json_out
        ) as progress:
            info = mm.add_model(
                model,
                metadata,
                progress=progress,
                wait=not no_wait,
                timeout=timeout,
                until="analyzed" if analyzed else "validated",
            )
        if json_out:
            print_json(info)
            return
        console.print(
            f"[green]stored[/green] {info.model} {info.version} (sequence {info.sequence}, "
            f"{_size(info.size_bytes)}, sha256 {info.artifact_id[:12]}…, {info.status})"
        )
        if info.pruned:
            console.print(
                f"retention (max_versions_per_model) deleted {len(info.pruned)} older "
                f"version{'s' if len(info.pruned) > 1 else ''}: {', '.join(info.pruned)}"
            )
        if info.retention_skipped:
            console.print(f"[yellow]retention put off:[/yellow] {info.retention_skipped}")

    run(ctx, action)


@app.command("list")
def list_(
    ctx: typer.Context,
    prefix: str | None = None,
    task: str | None = None,
    tag: str | None = None,
    offset: int = 0,
    limit: int = 50,
    json_out: JsonOption = False,
) -> None:
    """List models."""

    def action(mm: ModelManager) -> None:
        page = mm.list_models(prefix=prefix, task=task, tag=tag, offset=offset, limit=limit)
        if json_out:
            print_json(page)
            return
        table = Table(title=f"models {offset + 1}-{offset + len(page.items)} of {page.total}")
        for col in ("name", "latest", "versions", "task", "aliases", "updated"):
            table.add_column(col)
        for m in page.items:
            aliases = ", ".join(f"{a}→{v}" for a, v in m.aliases.items())
            table.add_row(
                m.name,
                m.latest_version or "-",
                str(m.version_count),
                m.task,
                aliases,
                m.updated_at.strftime("%Y-%m-%d %H:%M"),
            )
        console.print(table)

    run(ctx, action)


@app.command()
def show(
    ctx: typer.Context,
    name: Name,
    ref: Annotated[str | None, typer.Argument(metavar="VERSION", help="Version or alias")] = None,
    json_out: JsonOption = False,
) -> None:
    """Show a model and its versions, or one version (by number or alias)."""

    def action(mm: ModelManager) -> None:
        if ref is not None:
            info = mm.get_version(name, ref)
            if json_out:
                print_json(info)
                return
            md = info.metadata
            table = Table(show_header=False, title=f"{info.model} {info.version}")
            rows = [
                ("status", str(info.status)),
                ("sequence", str(info.sequence)),
                ("size", _size(info.size_bytes)),
                ("sha256", info.artifact_id),
                ("aliases", ", ".join(info.aliases)),
                ("task", md.task),
                ("framework", md.framework),
                ("description", md.description),
                ("tags", ", ".join(md.tags)),
                ("properties", ", ".join(f"{k}={v}" for k, v in md.properties.items())),
                ("uploaded", f"{info.uploaded_at:%Y-%m-%d %H:%M:%S} by {info.uploaded_by}"),
                ("source", md.source_url),
                ("parent", md.parent_version or ""),
            ]
            for key, value in rows:
                table.add_row(key, value)
            console.print(table)
            console.print(*report_tables(mm.get_reports(name, ref)))
            return
        model = mm.get_model(name)
        versions = mm.list_versions(name, limit=100)
        if json_out:
            print_json(
                {
                    **model.model_dump(mode="json"),
                    "versions": [v.model_dump(mode="json") for v in versions.items],
                }
            )
            return
        table = Table(title=f"{model.name}: {model.version_count} version(s)")
        for col in ("version", "seq", "status", "size", "aliases", "uploaded"):
            table.add_column(col)
        for v in versions.items:
            table.add_row(
                v.version,
                str(v.sequence),
                str(v.status),
                _size(v.size_bytes),
                ", ".join(v.aliases),
                f"{v.uploaded_at:%Y-%m-%d %H:%M}",
            )
        console.print(table)

    run(ctx, action)


@app.command()
def download(
    ctx: typer.Context,
    name: Name,
    ref: Ref,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="File, or directory to save into")
    ] = Path("."),
    json_out: JsonOption = False,
) -> None:
    """Download a version; its SHA-256 is verified before the file appears."""
    folder = output if output.is_dir() else output.parent
    if not folder.is_dir():  # said before the transfer starts, not after its bar
        raise typer.BadParameter(f"directory {folder} does not exist", param_hint="--output")

    def action(mm: ModelManager) -> None:
        with progress_bar(f"download {name} {ref}", enabled=not json_out) as progress:
            path = mm.download(name, ref, output, progress=progress)
        if json_out:
            print_json({"path": str(path)})
        else:
            console.print(f"[green]saved[/green] {path}")

    run(ctx, action)


@app.command()
def delete(
    ctx: typer.Context,
    name: Name,
    version: Annotated[str, typer.Argument(metavar="VERSION", help="The version to delete")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask")] = False,
    json_out: JsonOption = False,
) -> None:
    """Delete a version (admin); refused while an alias or a device needs it."""
    if not yes and not typer.confirm(f"delete {name} {version}?"):
        raise typer.Exit(1)

    def action(mm: ModelManager) -> None:
        out = mm.delete_version(name, version)
        if json_out:
            print_json(out)
        else:
            console.print(f"[green]deleted[/green] {name} {version}")

    run(ctx, action)


@app.command()
def alias(
    ctx: typer.Context,
    name: Name,
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="e.g. production")],
    version: Annotated[str | None, typer.Argument(metavar="VERSION", help="Target version")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the alias")] = False,
    json_out: JsonOption = False,
) -> None:
    """Point an alias (e.g. production) at a version, or --remove it."""
    if not remove and version is None:
        raise typer.BadParameter("give the VERSION to point at, or --remove", param_hint="VERSION")

    def action(mm: ModelManager) -> None:
        if remove:
            mm.remove_alias(name, alias_name)
            if json_out:
                print_json({"model": name, "alias": alias_name, "removed": True})
            else:
                console.print(f"removed alias {alias_name} of {name}")
            return
        assert version is not None
        info = mm.set_alias(name, alias_name, version)
        if json_out:
            print_json(info)
        else:
            was = f" (was {info.previous_version})" if info.previous_version else ""
            console.print(f"{name}:{alias_name} → {info.version}{was}")

    run(ctx, action)


@app.command()
def reports(ctx: typer.Context, name: Name, ref: Ref) -> None:
    """Print a version's validation and analysis reports (JSON)."""
    run(ctx, lambda mm: print_json(mm.get_reports(name, ref)))

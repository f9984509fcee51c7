"""What every sub-command shares: the connection options, JSON output, errors, progress."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from edgeaiforge._manager import ENV_TOKEN, ENV_URL, ModelManager

__all__ = [
    "JsonOption",
    "console",
    "err_console",
    "label_pairs",
    "manager",
    "print_json",
    "progress_bar",
    "run",
    "upload_then_wait",
]

console = Console()
err_console = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def label_pairs(items: list[str] | None) -> dict[str, str]:
    """``--label key=value`` options as a dict; anything without ``=`` is refused."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r} is not key=value", param_hint="--label")
        out[key] = value
    return out


def manager(ctx: typer.Context) -> ModelManager:
    """The ``ModelManager`` for the root command's ``--url`` and ``--token``."""
    obj = ctx.find_root().obj or {}
    return ModelManager(obj.get("url"), obj.get("token"))


def print_json(value: BaseModel | list[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, list):
        data = [v.model_dump(mode="json") for v in value]
    else:
        data = value
    typer.echo(json.dumps(data, indent=2))


def run(ctx: typer.Context, action: Callable[[ModelManager], None]) -> None:
    """Run ``action`` with a manager. Its errors go up to the root command, which prints
    each as one line (``edgeaiforge._cli._errors``)."""
    with manager(ctx) as mm:
        action(mm)


def _transfer_bar() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


@contextmanager
def progress_bar(description: str, *, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich transfer bar (on stderr); yields the SDK's progress callback."""
    if not enabled:
        yield None
        return
    with _transfer_bar() as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total if total >= 0 else None)

        yield update


@contextmanager
def upload_then_wait(
    description: str, waiting: str | None, *, enabled: bool
) -> Iterator[Callable[[int, int], None] | None]:
    """A transfer bar while the bytes go up, then (with ``waiting``) a spinner while the
    server holds the answer back; yields the SDK's progress callback."""
    if not enabled:
        yield None
        return
    bar = _transfer_bar()
    task = bar.add_task(description, total=None)
    spinner = err_console.status(waiting or "", spinner="dots")
    spinning = False

    def update(done: int, total: int) -> None:
        nonlocal spinning
        bar.update(task, completed=done, total=total if total >= 0 else None)
        if waiting and total >= 0 and done >= total and not spinning:
            # One live display at a time: the finished bar stays printed above.
            bar.stop()
            spinning = True
            spinner.start()

    bar.start()
    try:
        yield update
    finally:
        if spinning:
            spinner.stop()
        else:
            bar.stop()


ENV_HELP = f"from {ENV_URL} / {ENV_TOKEN}"

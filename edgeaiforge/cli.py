"""The ``edgeaiforge`` command. Each area is a typer sub-app in ``edgeaiforge/_cli/<area>.py``
mounted here with one line in ``SUBCOMMANDS``; a command without sub-commands (options
before or after its arguments) is one line in ``COMMANDS``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from edgeaiforge._cli import deploy, device, fleet, key, model, stack, stats
from edgeaiforge._cli._errors import RootGroup
from edgeaiforge._manager import ENV_TOKEN, ENV_URL

__all__ = ["COMMANDS", "SUBCOMMANDS", "app", "main"]

app = typer.Typer(
    name="edgeaiforge",
    help="EdgeAIForge: manage ONNX models for fleets of edge devices.",
    no_args_is_help=True,
    # Every error below the root becomes one `error: ...` line there (RootGroup).
    cls=RootGroup,
    pretty_exceptions_enable=False,
)

#: (name, sub-app)
SUBCOMMANDS: list[tuple[str, typer.Typer]] = [
    ("model", model.app),
    ("deployment", deploy.deployment_app),
    ("device", device.app),
    ("key", key.app),
    ("up", stack.up_app),
    ("down", stack.down_app),
    ("status", stack.status_app),
    ("fleet", fleet.app),
]

#: (name, function): commands with arguments and no sub-commands
COMMANDS: list[tuple[str, Callable[..., Any]]] = [
    ("deploy", deploy.deploy),
    ("stats", stats.stats),
]

for _name, _sub in SUBCOMMANDS:
    app.add_typer(_sub, name=_name)
for _name, _command in COMMANDS:
    app.command(_name)(_command)


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(envvar=ENV_URL, help="API base URL, e.g. http://127.0.0.1:8000")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar=ENV_TOKEN, help="API key", show_default=False)
    ] = None,
) -> None:
    ctx.obj = {"url": url, "token": token}


def main() -> None:
    """Entry point of the ``edgeaiforge`` script."""
    app()

"""The ``edgeaiforge`` command. Each area is a typer sub-app in ``edgeaiforge/_cli/<area>.py``
mounted here with one line in ``SUBCOMMANDS``; a command without sub-commands (options
before or after its arguments) is one line in ``COMMANDS``.

The platform's commands (``up``, ``down``, ``status``, ``fleet``) come from the
``edgeaiforge.commands`` entry points of the platform install; without it they say what to
install."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Annotated, Any

import typer
from rich.markup import escape

from edgeaiforge._cli import deploy, device, key, model, stats
from edgeaiforge._cli._common import err_console
from edgeaiforge._cli._errors import RootGroup
from edgeaiforge._manager import ENV_TOKEN, ENV_URL
from edgeaiforge.commands import ENTRY_POINT_GROUP

__all__ = ["COMMANDS", "PLATFORM_COMMANDS", "PLATFORM_INSTALL", "SUBCOMMANDS", "app", "main"]

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
]

#: Commands of the platform install, in the order help lists them.
PLATFORM_COMMANDS = ("up", "down", "status", "fleet")
PLATFORM_INSTALL = "pip install 'edgeaiforge[platform]'"

#: (name, function): commands with arguments and no sub-commands
COMMANDS: list[tuple[str, Callable[..., Any]]] = [
    ("deploy", deploy.deploy),
    ("stats", stats.stats),
]

for _name, _sub in SUBCOMMANDS:
    app.add_typer(_sub, name=_name)
for _name, _command in COMMANDS:
    app.command(_name)(_command)


def _not_installed(name: str, reason: str) -> Callable[..., None]:
    def command() -> None:
        err_console.print(
            f"[red]error:[/red] `edgeaiforge {name}` needs the platform, which is not "
            f"installed ({escape(reason)}): {escape(PLATFORM_INSTALL)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)

    command.__doc__ = f"Needs the platform: {escape(PLATFORM_INSTALL)}"
    return command


def _mount_plugins() -> None:
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for name in [*PLATFORM_COMMANDS, *sorted(set(found) - set(PLATFORM_COMMANDS))]:
        try:
            if name not in found:
                raise ImportError("no command registered")
            sub = found[name].load()
        except ImportError as exc:
            # The SDK install ships the platform's modules but not their dependencies.
            lenient = {"allow_extra_args": True, "ignore_unknown_options": True}
            app.command(name, context_settings=lenient)(_not_installed(name, str(exc)))
            continue
        app.add_typer(sub, name=name)


_mount_plugins()


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

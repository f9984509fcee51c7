"""``edgeaiforge key create|list|revoke|whoami``: API keys."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from edgeaiforge._cli._common import JsonOption, console, print_json, run
from edgeaiforge._manager import ModelManager
from schemas.registry import ApiKeyList, ApiRole

__all__ = ["app"]

app = typer.Typer(help="API keys (admin) and the key in use.", no_args_is_help=True)


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Who or what the key is for, e.g. ci-release")
    ],
    role: Annotated[ApiRole, typer.Option(help="admin, deployer or viewer")] = "viewer",
    expires_in: Annotated[
        int | None,
        typer.Option(
            "--expires-in",
            metavar="DAYS",
            min=0,
            help="Days until the key expires; 0: never; default: the platform's",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """A new key. Its token is printed once, here: only its hash is stored."""

    def action(mm: ModelManager) -> None:
        created = mm.create_api_key(name, role, lifetime_days=expires_in)
        if json_out:
            print_json(created)
            return
        k = created.key
        until = f"expires {_when(k.expires_at)}" if k.expires_at else "never expires"
        console.print(
            f"key {k.key_id} ({k.name}, {k.role}) created, {until}; its token, shown once:"
        )
        print(created.token)

    run(ctx, action)


@app.command("list")
def list_(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys")] = False,
    json_out: JsonOption = False,
) -> None:
    """Every key, without tokens."""

    def action(mm: ModelManager) -> None:
        keys = mm.list_api_keys(include_revoked=all_)
        if json_out:
            print_json(ApiKeyList(items=tuple(keys)))
            return
        table = Table()
        for column in ("key", "name", "role", "created", "by", "expires", "revoked"):
            table.add_column(column)
        now = datetime.now(UTC)
        for k in keys:
            expires = _when(k.expires_at) if k.expires_at else "never"
            if k.expires_at and k.expires_at <= now:
                expires += " (expired)"
            table.add_row(
                k.key_id, k.name, k.role, _when(k.created_at), k.created_by, expires,
                _when(k.revoked_at) if k.revoked_at else "",
            )  # fmt: skip
        console.print(table)

    run(ctx, action)


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")


@app.command()
def revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="From `key list`")],
    json_out: JsonOption = False,
) -> None:
    """Revoke a key at once: its next request is refused."""
    if not re.fullmatch(r"[0-9a-f]{12}", key_id):  # the API's rule, said in the user's words
        raise typer.BadParameter(
            f"{key_id!r} is not a key id: one is 12 hex digits, see `edgeaiforge key list`",
            param_hint="KEY_ID",
        )

    def action(mm: ModelManager) -> None:
        info = mm.revoke_api_key(key_id)
        if json_out:
            print_json(info)
            return
        console.print(f"key {info.key_id} ({info.name}) revoked")

    run(ctx, action)


@app.command()
def whoami(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """The key this command runs with."""

    def action(mm: ModelManager) -> None:
        me = mm.whoami()
        if json_out:
            print_json(me)
            return
        console.print(f"{me.name} ({me.role}), key {me.key_id}")

    run(ctx, action)

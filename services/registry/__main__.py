"""``python -m services.registry [--config FILE]`` runs the registry.

``python -m services.registry create-key --name NAME --role admin [--config FILE]`` creates
an API key directly in the registry's database (no NATS, no existing key needed) and
prints its token once: this is how the first admin key is made. ``revoke-key KEY_ID`` and
``list-keys`` work the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from schemas.config import Settings
from services.common.config import ConfigError, config_path_from_env, load_settings
from services.common.db import create_engine
from services.common.runner import run_service
from services.registry.app import create_service
from services.registry.errors import RegistryError
from services.registry.store import RegistryStore

_KEY_COMMANDS = ("create-key", "revoke-key", "list-keys")


async def _keys(settings: Settings, args: argparse.Namespace) -> None:
    engine = create_engine(settings.database)
    try:
        store = RegistryStore(engine)
        await store.create_tables()
        if args.command == "create-key":
            created = await store.create_api_key(
                name=args.name, role=args.role, created_by="registry create-key"
            )
            print(f"key id: {created.key.key_id}  role: {created.key.role}", file=sys.stderr)
            print("token (shown once; store it now):", file=sys.stderr)
            print(created.token)
        elif args.command == "revoke-key":
            info = await store.revoke_api_key(args.key_id)
            print(f"revoked {info.key_id} ({info.name}, {info.role})")
        else:
            for key in await store.list_api_keys(include_revoked=args.all):
                state = "revoked" if key.revoked_at else "active"
                print(f"{key.key_id}  {key.role:8}  {state:7}  {key.name}")
    finally:
        await engine.dispose()


def _key_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.registry")
    parser.add_argument("--config", type=Path, default=config_path_from_env())
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-key", help="create an API key and print its token")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=["admin", "deployer", "viewer"])
    revoke = sub.add_parser("revoke-key", help="revoke an API key")
    revoke.add_argument("key_id")
    listing = sub.add_parser("list-keys", help="list API keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    # Accept --config before or after the subcommand.
    args, rest = parser.parse_known_args(argv)
    if rest:
        extra = argparse.ArgumentParser()
        extra.add_argument("--config", type=Path)
        more = extra.parse_args(rest)
        args.config = more.config or args.config
    try:
        asyncio.run(_keys(load_settings(args.config), args))
    except (ConfigError, RegistryError) as exc:
        print(f"registry: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    argv = sys.argv[1:]
    if any(cmd in argv for cmd in _KEY_COMMANDS):
        _key_main(argv)
    else:
        run_service("registry", create_service, argv)


if __name__ == "__main__":
    main()

"""``python -m services.registry [--config FILE]`` runs the registry.

``python -m services.registry create-key --name NAME --role admin [--config FILE]`` creates
an API key directly in the registry's database (no NATS, no existing key needed) and
prints its token once: this is how the first admin key is made. ``revoke-key KEY_ID`` and
``list-keys`` work the same way.

``python -m services.registry rotate-kek [--check] [--config FILE]`` wraps every
artifact's data key with the current KEK (``security.encryption_key_path``), on the host
of ``storage_path``, while the platform runs; run it again to finish an interrupted run.
``--check`` only counts the artifacts each KEK wraps.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from schemas.config import Settings
from services.common.artifacts import ArtifactError, ArtifactStore, kek_usage, rotate_kek
from services.common.config import ConfigError, config_path_from_env, load_settings
from services.common.db import create_engine
from services.common.keys import KeyFileError, load_kek
from services.common.runner import run_service
from services.registry.app import create_service
from services.registry.errors import RegistryError
from services.registry.store import RegistryStore

_KEY_COMMANDS = ("create-key", "revoke-key", "list-keys", "rotate-kek")


def _rotate_kek(settings: Settings, check: bool, verbose: bool) -> int:
    keys = load_kek(settings.security)
    if keys is None:
        print("registry: security.encryption_enabled is false: no KEK to rotate", file=sys.stderr)
        return 2
    store = ArtifactStore(
        root=settings.model_repository.storage_path,
        kek=keys,
        chunk_size=settings.deployment.chunk_size,
    )
    if check:
        usage = kek_usage(store)
    else:

        def progress(artifact_id: str, changed: bool) -> None:
            if verbose and changed:
                print(f"rewrapped {artifact_id}", file=sys.stderr, flush=True)

        done = rotate_kek(store, progress=progress)
        print(
            f"rewrapped {done.rewrapped} artifacts, {done.unchanged} already done"
            + (f", {done.restored} torn headers put back" if done.restored else ""),
            file=sys.stderr,
        )
        usage = done.usage
    for kek_id in keys.ids():
        usage.setdefault(kek_id, 0)
    for kek_id, count in usage.most_common():
        what = {keys.active_id: "current", "": "no KEK id (older)", "unencrypted": ""}.get(
            kek_id, "previous" if keys.get(kek_id) else "NOT LOADED"
        )
        print(f"{kek_id or '-':16}  {count:6}  {what}")
    left = sum(n for k, n in usage.items() if k not in (keys.active_id, "unencrypted"))
    if left:
        print(f"{left} artifacts still need a previous KEK", file=sys.stderr)
        return 1
    idle = [k for k in keys.ids() if k != keys.active_id]
    if idle:
        print(
            f"KEK {', '.join(idle)} wraps nothing now: remove it from "
            "security.previous_encryption_key_paths and keep it offline or destroy it",
            file=sys.stderr,
        )
    return 0


async def _keys(settings: Settings, args: argparse.Namespace) -> None:
    engine = create_engine(settings.database)
    try:
        store = RegistryStore(engine)
        await store.create_tables()
        if args.command == "create-key":
            lifetime = (
                settings.api.key_lifetime_days if args.expires_in is None else args.expires_in
            )
            created = await store.create_api_key(
                name=args.name,
                role=args.role,
                created_by="registry create-key",
                lifetime_days=lifetime,
            )
            expires = created.key.expires_at
            print(
                f"key id: {created.key.key_id}  role: {created.key.role}  expires: "
                f"{expires.isoformat(timespec='seconds') if expires else 'never'}",
                file=sys.stderr,
            )
            print("token (shown once; store it now):", file=sys.stderr)
            print(created.token)
        elif args.command == "revoke-key":
            info = await store.revoke_api_key(args.key_id)
            print(f"revoked {info.key_id} ({info.name}, {info.role})")
        else:
            for key in await store.list_api_keys(include_revoked=args.all):
                now = datetime.now(UTC)
                state = (
                    "revoked"
                    if key.revoked_at
                    else "expired"
                    if key.expires_at and key.expires_at <= now
                    else "active"
                )
                until = key.expires_at.isoformat(timespec="seconds") if key.expires_at else "never"
                print(f"{key.key_id}  {key.role:8}  {state:7}  {until:25}  {key.name}")
    finally:
        await engine.dispose()


def _key_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.registry")
    parser.add_argument("--config", type=Path, default=config_path_from_env())
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-key", help="create an API key and print its token")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=["admin", "deployer", "viewer"])
    create.add_argument(
        "--expires-in",
        type=int,
        metavar="DAYS",
        help="days until the key expires (0: never; default: api.key_lifetime_days)",
    )
    revoke = sub.add_parser("revoke-key", help="revoke an API key")
    revoke.add_argument("key_id")
    listing = sub.add_parser("list-keys", help="list API keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    rotate = sub.add_parser(
        "rotate-kek", help="wrap every artifact's data key with the current KEK (resumable)"
    )
    rotate.add_argument(
        "--check", action="store_true", help="only count the artifacts each KEK wraps"
    )
    rotate.add_argument("--verbose", action="store_true", help="name each artifact rewrapped")
    # Accept --config before or after the subcommand.
    args, rest = parser.parse_known_args(argv)
    if rest:
        extra = argparse.ArgumentParser()
        extra.add_argument("--config", type=Path)
        more = extra.parse_args(rest)
        args.config = more.config or args.config
    try:
        settings = load_settings(args.config)
        if args.command == "rotate-kek":
            raise SystemExit(_rotate_kek(settings, args.check, args.verbose))
        asyncio.run(_keys(settings, args))
    except (ConfigError, RegistryError, KeyFileError, ArtifactError) as exc:
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

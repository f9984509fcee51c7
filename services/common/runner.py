"""The entry point every service shares: ``python -m services.<name> [--config FILE]``.

It reads the configuration once, configures logging, opens the service (an async context
manager built from the settings) and runs until SIGTERM or SIGINT. A configuration or key
problem ends the process with the message and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from schemas.config import Settings
from services.common.config import ConfigError, config_path_from_env, load_settings
from services.common.keys import KeyFileError
from services.common.logging import configure_logging, get_logger

__all__ = ["run_service"]

ServiceFactory = Callable[[Settings], AbstractAsyncContextManager[Any]]


def run_service(name: str, factory: ServiceFactory, argv: list[str] | None = None) -> None:
    """Parse ``--config``, then run ``factory(settings)`` until a stop signal."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    parser.add_argument(
        "--config",
        type=Path,
        default=config_path_from_env(),
        help="TOML configuration file (default: $EAF_CONFIG, else built-in defaults)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(name, level=args.log_level)
    try:
        settings = load_settings(args.config)
        asyncio.run(_serve(name, factory, settings))
    except (ConfigError, KeyFileError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass


async def _serve(name: str, factory: ServiceFactory, settings: Settings) -> None:
    log = get_logger(name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with factory(settings):
        log.info("service started", service=name)
        await stop.wait()
        log.info("service stopping", service=name)

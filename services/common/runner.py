"""The entry point every service shares: ``python -m services.<name> [--config FILE]``.

It reads the configuration once, configures logging, opens the service (an async context
manager built from the settings) and runs until SIGTERM or SIGINT. A configuration or key
problem ends the process with the message and exit status 2, without a traceback.

A stop signal logs one line (``service stopping``) and the process exits with status 0
within about two seconds, whatever it was doing: during start-up (waiting for a server,
the validator's self-test) the start is cancelled at once; once started, the service
leaves its context (each stops its consumers, commits what it accepted) and what is still
running after ``STOP_GRACE`` seconds is cancelled. A second signal cancels at once.
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

__all__ = ["STOP_GRACE", "run_service"]

#: Seconds a service has, after a stop signal, to leave its context before what is left
#: is cancelled. Each service's own stop takes well under a second; this is a backstop.
STOP_GRACE = 1.5

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
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stop = asyncio.Event()
    started = False
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:  # a second Ctrl-C: stop now, whatever is left to clean up
            main.cancel()
            return
        log.info("service stopping", signal=sig.name)
        stop.set()
        if not started:
            # Start-up may wait a long time (a server that is not there yet, the
            # validator's self-test): nothing it began is worth finishing.
            main.cancel()
        else:
            # A backstop: each service stops well within this on its own.
            loop.call_later(STOP_GRACE, main.cancel)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    log.debug("service starting")
    began = 0.0
    try:
        async with factory(settings):
            started = True
            log.info("service started")
            await stop.wait()
            began = loop.time()
    except asyncio.CancelledError:
        if not signals:
            raise
        if started:
            log.warning("service did not stop in time; cancelled", grace_s=STOP_GRACE)
    log.debug("service stopped", stop_s=round(loop.time() - began, 3) if began else None)

"""The ``edge-runtime`` command: ``enroll``, ``run`` and ``status``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import uvicorn

from pydantic import ValidationError

from edge_runtime import _faults
from edge_runtime._enroll import enroll
from edge_runtime._runtime import EdgeRuntime
from edge_runtime._state import ConnectionState, StateDir
from edge_runtime.errors import EdgeRuntimeError, NoModelError
from schemas.topics import InvalidIdentifierError

__all__ = ["main"]


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} edge-runtime: {message}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse, with a wrong command line as one line that says where to look."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split())
        self.exit(2, f"edge-runtime: error: {message}; {usage} (more: {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("enroll", help="register this device with the platform (once)")
    p.add_argument("--api", required=True, help="the platform's REST API, e.g. http://host:8000")
    p.add_argument("--token", required=True, help="one-time enrolment token")
    p.add_argument("--device-id", required=True)
    p.add_argument("--state-dir", type=Path, required=True)

    p = sub.add_parser("run", help="run the device agent")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--mqtt-host", help="override the broker host given at enrolment")
    p.add_argument("--mqtt-port", type=int, help="override the broker port given at enrolment")
    p.add_argument("--window", type=int, help="chunk requests kept outstanding")
    p.add_argument("--stall-timeout", type=float, help="seconds without a chunk before retrying")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument(
        "--prepack-weights",
        action="store_true",
        help="let onnxruntime repack large weights for speed (holds them twice in memory)",
    )
    p.add_argument(
        "--http", default="127.0.0.1:8470", help="local inference endpoint HOST:PORT ('' = off)"
    )
    p.add_argument(
        "--simulate", type=float, default=0.0, metavar="RATE", help="run RATE inferences/s"
    )
    p.add_argument(
        "--metrics-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="publish inference metrics every SECONDS (0 = off)",
    )

    p = sub.add_parser(
        "status", help="print the device's installed models and its link to the broker"
    )
    p.add_argument("--state-dir", type=Path, required=True)
    return parser


def _http_server(runtime: EdgeRuntime, address: str) -> uvicorn.Server:
    import uvicorn

    from edge_runtime.local_api import create_http_app

    class Server(uvicorn.Server):
        # The runtime owns SIGTERM/SIGINT (one log line, then its own orderly stop); it
        # ends the server through ``should_exit``, never by cancelling it (uvicorn would
        # log the cancellation as a traceback).
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    host, _, port = address.rpartition(":")
    config = uvicorn.Config(
        create_http_app(runtime),
        host=host or "127.0.0.1",
        port=int(port),
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    return Server(config)


async def _run(args: argparse.Namespace) -> None:
    # Test-only fault hook (see edge_runtime/_faults.py); unset in production.
    _faults.arm(os.environ.get(_faults.ENV_CRASH_AT))
    runtime = EdgeRuntime(
        args.state_dir,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        window_size=args.window,
        stall_timeout=args.stall_timeout,
        threads=args.threads,
        prepack_weights=args.prepack_weights,
        metrics_interval=args.metrics_interval or None,
        log=_log,
    )
    server = _http_server(runtime, args.http) if args.http else None

    def on_signal(sig: signal.Signals) -> None:
        if not runtime.stopping:
            _log(f"stopping ({sig.name})")
        runtime.stop()
        if server is not None:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    extras: list[asyncio.Task[Any]] = []
    if args.simulate > 0:
        extras.append(asyncio.create_task(runtime.simulate(args.simulate)))
    serving = asyncio.create_task(server.serve()) if server is not None else None
    try:
        await runtime.run()
    finally:
        for task in extras:
            task.cancel()
        for task in extras:
            with contextlib.suppress(asyncio.CancelledError, NoModelError):
                await task
        if serving is not None:
            assert server is not None
            server.should_exit = True
            # It closes its socket and lets requests in flight finish (at most 1 s).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(serving), 2)
            if not serving.done():
                serving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception, SystemExit):
                await serving


def _connection(state: StateDir) -> dict[str, Any] | None:
    """``status.json`` as the running runtime wrote it; a runtime that died without a word
    (killed, power lost) left a state other than ``stopped``: shown as ``not running``."""
    connection = state.connection()
    if connection is None:
        return None
    shown: dict[str, Any] = {
        "state": connection.state.value,
        "since": connection.since,
        "detail": connection.detail,
        "pid": connection.pid,
    }
    if connection.state is not ConnectionState.STOPPED and not _alive(connection.pid):
        shown["state"] = "not running"
        shown["last_state"] = connection.state.value
    return shown


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by another user
    return True


def _one_line(exc: ValidationError | InvalidIdentifierError) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "input"
        return f"invalid {where.replace('_', '-')}: {first['msg']}"
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``edge-runtime``."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "enroll":
            reply = enroll(
                args.api, token=args.token, device_id=args.device_id, state_dir=args.state_dir
            )
            print(f"enrolled {reply.device_id}; broker {reply.mqtt.host}:{reply.mqtt.port}")
        elif args.command == "status":
            state = StateDir(args.state_dir)
            installed = state.installed()
            print(
                json.dumps(
                    {
                        "device_id": state.enrollment().device_id,
                        "active": installed.active.model_dump() if installed.active else None,
                        "previous": installed.previous.model_dump() if installed.previous else None,
                        "connection": _connection(state),
                    },
                    indent=2,
                )
            )
        else:
            asyncio.run(_run(args))
    except EdgeRuntimeError as exc:
        print(f"edge-runtime: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ValidationError, InvalidIdentifierError) as exc:
        # A token or device id the platform would refuse, caught before anything is sent.
        print(f"edge-runtime: error: {_one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass

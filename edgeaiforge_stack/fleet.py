"""Simulated devices: many edge runtimes in one process, each with inference load.

``enroll_fleet`` enrols devices through the REST API (an admin makes a one-time token per
device; the device makes its own key pair) into ``<root>/<device_id>``, reusing devices
enrolled before. ``run_fleet`` runs one ``EdgeRuntime`` per device, each with its own MQTT
session, simulated inference at a given rate, and the metrics reporter that the real
runtime uses (histograms, an on-disk spool, batches every ``interval`` seconds).

``python -m edgeaiforge_stack.fleet ROOT ID...`` runs already enrolled devices until SIGTERM:
it is what ``edgeaiforge fleet simulate --background`` starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from edge_runtime import EdgeRuntime, EdgeRuntimeError, StateDir, enroll
from edge_runtime.errors import NoModelError, NotEnrolledError
from edge_runtime.metrics import MetricsCollector, MetricsReporter
from edge_runtime.spool import MetricsSpool
from edgeaiforge import EdgeAIForgeError, ModelManager, NotFoundError

__all__ = ["FleetError", "device_ids", "enroll_fleet", "enrolled", "run_fleet", "serve_fleet"]


class FleetError(EdgeAIForgeError):
    """A simulated device could not be enrolled or started; the message says why."""

    def __init__(self, device_id: str, reason: str) -> None:
        self.device_id = device_id
        super().__init__(f"simulated device {device_id}: {reason}")


def device_ids(count: int, *, prefix: str = "sim-") -> list[str]:
    """``sim-001``, ``sim-002``, ...: stable ids, so a second run reuses the same devices."""
    return [f"{prefix}{i:03d}" for i in range(1, count + 1)]


def enrolled(state_dir: Path) -> bool:
    """Whether ``state_dir`` holds a completed enrolment."""
    try:
        StateDir(state_dir).enrollment()
        StateDir(state_dir).private_key()
    except NotEnrolledError:
        return False
    except ValueError:  # a damaged file: enrol again
        return False
    return True


def enroll_fleet(
    manager: ModelManager,
    ids: Sequence[str],
    root: Path,
    *,
    group: str | None = None,
    labels: dict[str, str] | None = None,
    on_device: Callable[[str, str], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Enrol each device not enrolled yet; returns ``{device_id: "enrolled" | "reused" |
    "re-enrolled"}``.

    A device enrolled here before is asked about first: if the platform no longer knows it
    (its database was reset) or has removed it (its broker account is gone), its old
    credentials would be refused forever, so it is enrolled again with a new token made
    for its id, and ``say`` gets one line saying why.
    """
    outcome: dict[str, str] = {}
    for device_id in ids:
        state_dir = root / device_id
        how = "enrolled"
        if enrolled(state_dir):
            stale = _stale_reason(manager, device_id)
            if stale is None:
                outcome[device_id] = "reused"
                if on_device is not None:
                    on_device(device_id, "reused")
                continue
            if say is not None:
                say(f"{device_id} {stale}: enrolling it again with a new token")
            shutil.rmtree(state_dir)
            how = "re-enrolled"
        elif state_dir.exists():
            shutil.rmtree(state_dir)  # a half-made enrolment: start over
        token = manager.create_enrollment_token(device_id=device_id, group=group, labels=labels)
        try:
            enroll(manager.url, token=token.token, device_id=device_id, state_dir=state_dir)
        except EdgeRuntimeError as exc:
            raise FleetError(device_id, str(exc)) from None
        outcome[device_id] = how
        if on_device is not None:
            on_device(device_id, how)
    return outcome


def _stale_reason(manager: ModelManager, device_id: str) -> str | None:
    """Why the platform no longer honours ``device_id``'s enrolment, or None if it does."""
    try:
        device = manager.get_device(device_id)
    except NotFoundError:
        return "is unknown to the platform (its database was reset?)"
    if device.removed_at is not None:
        by = f" by {device.removed_by}" if device.removed_by else ""
        why = f" ({device.removal_reason})" if device.removal_reason else ""
        return f"was removed from the fleet{by} at {device.removed_at:%Y-%m-%d %H:%M:%S}{why}"
    return None


async def _serve_http(
    runtime: EdgeRuntime, host: str, port: int, say: Callable[[str], None]
) -> None:
    import uvicorn

    from edge_runtime.local_api import create_http_app

    class Server(uvicorn.Server):
        # The fleet owns SIGTERM/SIGINT; uvicorn must not replace its handlers.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(create_http_app(runtime), host=host, port=port, log_level="critical")
    try:
        await Server(config).serve()
    except (OSError, SystemExit):
        # uvicorn exits when it cannot bind; the device itself keeps running without it.
        say(f"{runtime.device_id}: no local inference endpoint: cannot listen on {host}:{port}")


async def run_fleet(
    root: Path,
    ids: Sequence[str],
    *,
    rate: float,
    interval: float = 5.0,
    http_host: str = "127.0.0.1",
    http_port: int = 0,
    stop: asyncio.Event | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    """Run the enrolled devices ``ids`` (state under ``root``) until ``stop`` is set.

    With ``http_port``, device number k (from 0) serves its local inference endpoint on
    ``http_port + k``.
    """
    say = log or (lambda _msg: None)
    stop = stop or asyncio.Event()
    runtimes: list[EdgeRuntime] = []
    tasks: list[asyncio.Task[None]] = []
    for k, device_id in enumerate(ids):
        state_dir = root / device_id
        if not enrolled(state_dir):
            raise FleetError(device_id, f"not enrolled in {state_dir}; enrol it first")
        collector = MetricsCollector(device_id)
        runtime = EdgeRuntime(
            state_dir,
            recorder=collector.record,
            log=lambda msg, d=device_id: say(f"{d}: {msg}"),  # type: ignore[misc]
        )
        reporter = MetricsReporter(
            collector,
            MetricsSpool(state_dir / "metrics.db"),
            topics=runtime.topics,
            interval=interval,
        )
        runtimes.append(runtime)
        tasks.append(asyncio.create_task(runtime.run(), name=f"{device_id}-runtime"))
        tasks.append(asyncio.create_task(reporter.run_with(runtime.publish_metrics)))
        if rate > 0:
            tasks.append(asyncio.create_task(runtime.simulate(rate)))
        if http_port:
            tasks.append(asyncio.create_task(_serve_http(runtime, http_host, http_port + k, say)))
    say(f"running {len(runtimes)} devices at {rate:g} inferences/s each")
    waiter = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for runtime in runtimes:
            runtime.stop()
        # Give each runtime a moment to say goodbye (online = 0) before cancelling the rest.
        runs = [t for t in tasks if t.get_name().endswith("-runtime")]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 10)
        waiter.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(waiter, *tasks, return_exceptions=True)
        say("stopped")


def serve_fleet(
    root: Path,
    ids: list[str],
    *,
    rate: float,
    interval: float,
    http_port: int,
    log: Callable[[str], None],
) -> None:
    """Run the devices in this process until SIGTERM or SIGINT."""

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_fleet(
            root, ids, rate=rate, interval=interval, http_port=http_port, stop=stop, log=log
        )

    asyncio.run(serve())


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} fleet: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m edgeaiforge_stack.fleet ROOT ID... [--rate R]``: run enrolled devices."""
    parser = argparse.ArgumentParser(prog="python -m edgeaiforge_stack.fleet")
    parser.add_argument("root", type=Path, help="directory of the devices' state dirs")
    parser.add_argument("ids", nargs="+", help="device ids (enrolled under ROOT)")
    parser.add_argument("--rate", type=float, default=10.0, help="inferences/s per device")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds per metrics batch")
    parser.add_argument("--http-port", type=int, default=0, help="first device's HTTP port")
    args = parser.parse_args(argv)

    try:
        serve_fleet(
            args.root, args.ids, rate=args.rate, interval=args.interval,
            http_port=args.http_port, log=_log,
        )  # fmt: skip
    except (FleetError, NoModelError) as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

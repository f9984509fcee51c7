"""``edgeaiforge fleet simulate|stop``: simulated devices for the local stack."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from edgeaiforge import EdgeAIForgeError, ModelManager
from edgeaiforge.commands import console, err_console, manager
from edgeaiforge_stack.commands import ConfigOption, load, print_stopped
from edgeaiforge_stack.fleet import device_ids, enroll_fleet, serve_fleet
from edgeaiforge_stack.layout import StackLayout, api_url, extras
from edgeaiforge_stack.processes import process_running, spawn, stop_processes

__all__ = ["app", "fleet_root"]

app = typer.Typer(help="Simulated devices: enrol and run many edge runtimes.", no_args_is_help=True)

_ONLINE_TIMEOUT = 60.0


def fleet_root(layout: StackLayout) -> Path:
    """Where the simulated devices keep their state: ``<stack.data_dir>/fleet``."""
    return layout.root / "fleet"


def _worker_argv(
    root: Path, ids: list[str], rate: float, interval: float, http_port: int
) -> list[str]:
    argv = [sys.executable, "-m", "edgeaiforge_stack.fleet", str(root), *ids]
    argv += ["--rate", f"{rate:g}", "--interval", f"{interval:g}"]
    if http_port:
        argv += ["--http-port", str(http_port)]
    return argv


def _shards(ids: list[str], processes: int) -> list[tuple[int, list[str]]]:
    """Contiguous slices (first index, ids), so device k keeps port HTTP_PORT+k."""
    count = max(1, min(processes, len(ids)))
    size = -(-len(ids) // count)
    return [(start, ids[start : start + size]) for start in range(0, len(ids), size)]


def _wait_online(mm: ModelManager, ids: list[str], timeout: float) -> list[str]:
    """Wait until every device reports online; returns those that did not in time."""
    deadline = time.monotonic() + timeout
    while True:
        online = {d.device_id for d in mm.list_devices(online=True)}
        missing = [i for i in ids if i not in online]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


@app.command()
def simulate(
    ctx: typer.Context,
    devices: Annotated[int, typer.Option("--devices", "-n", min=1, help="How many devices")],
    rate: Annotated[float, typer.Option(min=0, help="Inferences per second per device")] = 10.0,
    group: Annotated[str, typer.Option(help="Group the devices enrol into")] = "simulated",
    prefix: Annotated[str, typer.Option(help="Device ids are PREFIX001, PREFIX002, ...")] = "sim-",
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds per metrics batch")] = 5.0,
    processes: Annotated[int, typer.Option(min=1, help="Split the devices over processes")] = 1,
    http_port: Annotated[
        int, typer.Option(help="Device k serves POST /v1/infer on HTTP_PORT+k (0: off)")
    ] = 0,
    background: Annotated[
        bool,
        typer.Option(
            "--background",
            help="Run detached (stopped by `edgeaiforge down` or `fleet stop`); return once "
            "every device is online",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Enrol N devices through the API (once; later runs reuse them) and run them.

    The root options --url/--token (or EAF_API_URL/EAF_API_TOKEN) name the API and an
    admin key; the URL defaults to the local stack's. State lives under
    <stack.data_dir>/fleet/<device id>.
    """
    settings, _ = load(config)
    layout = StackLayout.of(settings)
    root = fleet_root(layout)
    ids = device_ids(devices, prefix=prefix)
    obj = ctx.find_root().obj or {}
    if not obj.get("url"):
        ctx.find_root().obj = {**obj, "url": api_url(settings)}
    try:
        with manager(ctx) as mm:
            counts = {"enrolled": 0, "reused": 0, "re-enrolled": 0}

            def seen(_device: str, how: str) -> None:
                counts[how] += 1

            with err_console.status(f"enrolling {devices} devices"):
                enroll_fleet(
                    mm,
                    ids,
                    root,
                    group=group,
                    on_device=seen,
                    say=lambda line: console.print(f"fleet: {line}", highlight=False),
                )
            again = f", {counts['re-enrolled']} re-enrolled" if counts["re-enrolled"] else ""
            console.print(
                f"fleet: {counts['enrolled']} devices enrolled, {counts['reused']} reused{again} "
                f"(group {group!r}, state in {root})"
            )
            argvs = [
                _worker_argv(root, shard, rate, interval, http_port + start if http_port else 0)
                for start, shard in _shards(ids, processes)
            ]
            if background:
                # A running fleet holds the old credentials of a re-enrolled device.
                restart = counts["re-enrolled"] > 0
                _start_background(layout, argvs, devices, rate, restart=restart)
                with err_console.status("waiting for every device to come online"):
                    missing = _wait_online(mm, ids, _ONLINE_TIMEOUT)
                if missing:
                    err_console.print(
                        f"[red]error:[/red] not online after {_ONLINE_TIMEOUT:.0f} s: "
                        f"{', '.join(missing)}; see {layout.logs}/fleet*.log"
                    )
                    raise typer.Exit(1)
                console.print(
                    f"fleet: {devices} devices online at {rate:g} inferences/s each; "
                    "stop with: edgeaiforge fleet stop (or edgeaiforge down)"
                )
                return
    except EdgeAIForgeError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    _run_foreground(root, ids, argvs, rate, interval, http_port)


def _start_background(
    layout: StackLayout,
    argvs: list[list[str]],
    devices: int,
    rate: float,
    *,
    restart: bool = False,
) -> None:
    names = ["fleet"] if len(argvs) == 1 else [f"fleet-{k + 1}" for k in range(len(argvs))]
    running = {
        name: layout.read_record(name)
        for name in extras(layout)
        if name == "fleet" or name.startswith("fleet-")
    }
    wanted = dict(zip(names, argvs, strict=True))
    same = (
        not restart
        and set(running) == set(wanted)
        and all(
            process_running(rec) and rec["argv"] == wanted[name] for name, rec in running.items()
        )
    )
    if same:
        console.print("fleet: already running with these devices; reusing it")
        return
    if running and restart:
        console.print("fleet: restarting the running fleet, so it uses the new credentials")
    stop_processes(layout, list(running))
    detail = f"{devices} simulated devices, {rate:g} inferences/s each"
    for name, argv in wanted.items():
        spawn(layout, name, argv, detail=detail)


def _run_foreground(
    root: Path, ids: list[str], argvs: list[list[str]], rate: float, interval: float, port: int
) -> None:
    console.print(f"fleet: running {len(ids)} devices; Ctrl-C stops them")
    if len(argvs) > 1:
        children = [subprocess.Popen(argv) for argv in argvs]  # noqa: S603 - our own module
        try:
            for child in children:
                child.wait()
        except KeyboardInterrupt:
            for child in children:
                child.send_signal(signal.SIGTERM)
            for child in children:
                child.wait()
        return

    serve_fleet(
        root, ids, rate=rate, interval=interval, http_port=port,
        log=lambda msg: err_console.print(f"fleet: {msg}", highlight=False),
    )  # fmt: skip


@app.command()
def stop(config: ConfigOption = None) -> None:
    """Stop a fleet started with --background; return once its processes are gone."""
    settings, _ = load(config)
    layout = StackLayout.of(settings)
    names = [n for n in extras(layout) if n == "fleet" or n.startswith("fleet-")]
    began = time.monotonic()
    stopped = stop_processes(layout, names)
    if not stopped:
        console.print("no fleet was running")
        return
    print_stopped(stopped, time.monotonic() - began)
    if not all(s.gone for s in stopped):
        raise typer.Exit(1)

"""The EdgeAIForge demo (``make demo``): the whole platform at work on this machine.

It brings the local stack up (or reuses it), builds a small image classifier with
``onnx.helper`` (no download), uploads it, shows its validation and analysis, enrols
simulated devices, rolls the model out in waves, runs an inference on a device, reads the
devices' live statistics from InfluxDB through the tracker, then uploads a second version,
deploys it to one canary device, compares the two versions on that device and promotes
the new one to every device. Run it again and it continues from where the last run left
off: the stack, the API key, the devices and the versions are reused, and the next
version is derived from the latest.

    .venv/bin/python scripts/demo.py [--config config/edgeaiforge.toml] [--devices 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import onnx
import semver
from nats.aio.client import Client as NatsClient
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from edgeaiforge import Model, ModelManager, ModelMetadata
from edgeaiforge._cli.deploy import progress_table
from edgeaiforge._cli.reports import report_tables
from edgeaiforge._errors import AuthenticationError, EdgeAIForgeError, NotFoundError
from edgeaiforge_stack.servers import free_port
from edgeaiforge_stack.stack import StackError, StackLayout, api_url, up
from schemas.config import Settings
from schemas.deployer import DeploymentInfo
from schemas.events import DeploymentOutcome
from schemas.registry import VersionInfo, VersionStatus
from schemas.stats import EvaluateReply, EvaluateRequest, TrackerRpc, VersionComparison
from services.common.bus import parse_reply
from services.common.config import ConfigError, load_settings

MODEL = "demo-classifier"
GROUP = "demo"
ALIAS = "production"
CLASSES = ("cat", "dog", "bird", "car", "tree", "boat", "plane", "bike", "cup", "lamp")
TOKEN_FILE = "demo-admin.token"  # noqa: S105 - a file name
STEPS = 10

console = Console()
T = TypeVar("T")


class DemoError(Exception):
    """A step of the demo failed; the message says which and where to look."""


# ---- the models ---------------------------------------------------------------------------


def build_classifier(version: str, *, width: int) -> bytes:
    """A small CNN: float32[1, 3, 32, 32] image -> softmax over 10 classes.

    conv3x3(3->w) relu maxpool, conv3x3(w->2w) relu, global average pool, dense, softmax.
    Weights are seeded by the version, so every version has its own bytes.
    """
    rng = np.random.default_rng(zlib.crc32(version.encode()))

    def weights(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        scale = np.sqrt(2.0 / fan_in)
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    def bias(name: str, n: int) -> onnx.TensorProto:
        return numpy_helper.from_array(np.zeros(n, dtype=np.float32), name)

    w2 = 2 * width
    initializers = [
        weights("conv1_w", width, 3, 3, 3),
        bias("conv1_b", width),
        weights("conv2_w", w2, width, 3, 3),
        bias("conv2_b", w2),
        weights("fc_w", w2, len(CLASSES)),
        bias("fc_b", len(CLASSES)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv1_w", "conv1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2_w", "conv2_b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "demo_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, len(CLASSES)])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeaiforge-demo"
    )
    model.ir_version = 8
    model.doc_string = f"EdgeAIForge demo classifier {version} (width {width})"
    onnx.checker.check_model(model, full_check=True)
    data: bytes = model.SerializeToString()
    return data


# ---- helpers ----------------------------------------------------------------------------


def step(number: int, title: str) -> None:
    console.print()
    console.rule(f"[bold cyan]{number}/{STEPS}  {title}", align="left")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    """Call ``probe`` until it returns something, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with console.status(what):
        while True:
            value = probe()
            if value is not None:
                return value
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f} s: {what}")
            time.sleep(every)


def admin_token(settings: Settings, config: Path, layout: StackLayout) -> str:
    """The demo's admin API key: made once with the registry's create-key, kept in var/secrets."""
    path = layout.secrets / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        try:
            with ModelManager(api_url(settings), token) as mm:
                mm.whoami()
            console.print(f"reusing the admin API key in {path}")
            return token
        except AuthenticationError:
            console.print(f"the key in {path} is no longer valid: making a new one")
    result = subprocess.run(  # noqa: S603 - our own interpreter and module
        [
            *(sys.executable, "-m", "services.registry", "create-key"),
            *("--name", "demo-admin", "--role", "admin", "--config", str(config)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    token = result.stdout.strip()
    if result.returncode != 0 or not token:
        raise DemoError(f"create-key failed: {result.stderr.strip()}")
    layout.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(token + "\n")
    path.chmod(0o600)
    console.print(
        "made an admin API key with "
        f"`python -m services.registry create-key --name demo-admin --role admin`; kept in {path}"
    )
    return token


def versions_of(mm: ModelManager) -> list[VersionInfo]:
    try:
        return list(mm.list_versions(MODEL, limit=100).items)
    except NotFoundError:
        return []


def next_version(existing: list[VersionInfo]) -> str:
    """One minor version above the highest there is (1.0.0 for a new model)."""
    parsed = [semver.Version.parse(v.version) for v in existing]
    if not parsed:
        return "1.0.0"
    return str(max(parsed).bump_minor())


def upload(mm: ModelManager, version: str, *, width: int, parent: str | None) -> VersionInfo:
    data = build_classifier(version, width=width)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{MODEL}-{version}.onnx"
        path.write_bytes(data)
        console.print(
            f"built {path.name} with onnx.helper: {len(data):,} bytes, conv {width}/{2 * width} "
            "channels"
        )
        metadata = ModelMetadata(
            "Image Classification",
            version,
            framework="onnx",
            description=f"demo CNN, 3x32x32 -> {len(CLASSES)} classes",
            tags=("demo", "vision"),
            properties={"classes": ",".join(CLASSES)},
            parent_version=parent,
        )
        info = mm.add_model(Model(MODEL, path), metadata)
    console.print(f"uploaded {MODEL} {info.version} (sequence {info.sequence}, {info.status})")
    return info


def checked(mm: ModelManager, version: str) -> VersionInfo:
    """Wait for the validator and the analyzer, then show their reports."""

    def probe() -> VersionInfo | None:
        info = mm.get_version(MODEL, version)
        return info if info.status in (VersionStatus.ANALYZED, VersionStatus.REJECTED) else None

    info = wait_for(f"validating and analysing {MODEL} {version}", probe, 180)
    if info.status is VersionStatus.REJECTED:
        raise DemoError(f"{MODEL} {version} was rejected: {info.rejection_reason}")
    console.print(*report_tables(mm.get_reports(MODEL, version)))
    return info


def follow(mm: ModelManager, created: DeploymentInfo, timeout: float = 300) -> DeploymentInfo:
    """The rollout's live per-device table until it ends; it must succeed."""
    with Live(progress_table(created), console=console, refresh_per_second=4) as live:
        final = mm.wait_for_deployment(
            created.deployment_id,
            timeout=timeout,
            on_progress=lambda info: live.update(progress_table(info)),
        )
    console.print()
    if final.outcome is not DeploymentOutcome.SUCCEEDED:
        raise DemoError(
            f"deployment {final.deployment_id} ended {final.outcome}: {final.reason}; "
            "see var/log/deployer.log and var/log/fleet.log"
        )
    return final


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (device k listens on base+k)."""
    for _ in range(50):
        base = free_port()
        if base + count < 65536 and all(_free(base + k) for k in range(count)):
            return base
    raise DemoError(f"found no {count} consecutive free ports for the devices' endpoints")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_fleet(token: str, config: Path, layout: StackLayout, devices: int) -> int:
    """``edgeaiforge fleet simulate --background``; returns the first device's HTTP port."""
    record = layout.read_record("fleet")
    port = 0
    if record is not None and "--http-port" in record["argv"]:
        port = int(record["argv"][record["argv"].index("--http-port") + 1])
    port = port or free_ports(devices)
    command = [
        str(Path(sys.executable).parent / "edgeaiforge"),
        "fleet",
        "simulate",
        "--devices",
        str(devices),
        "--rate",
        "20",
        "--interval",
        "2",
        "--group",
        GROUP,
        "--http-port",
        str(port),
        "--background",
        "--config",
        str(config),
    ]
    console.print("$ " + " ".join(["edgeaiforge", *command[1:]]), style="dim", highlight=False)
    result = subprocess.run(  # noqa: S603 - our own command
        command, env={**os.environ, "EAF_API_TOKEN": token}, check=False
    )
    if result.returncode != 0:
        log = layout.log("fleet")
        try:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            tail = []
        raise DemoError(
            "the simulated fleet did not start (the lines above say which devices and why); "
            f"see {log}" + ("; its last lines:\n" + "\n".join(tail) if tail else "")
        )
    return port


def infer(port: int) -> None:
    """One inference on device sim-001 through its local endpoint (POST /v1/infer)."""
    rng = np.random.default_rng(7)
    image = rng.random((1, 3, 32, 32), dtype=np.float32).round(3).tolist()
    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/infer", json={"inputs": {"image": image}}, timeout=10
    )
    if reply.status_code != 200:
        raise DemoError(f"sim-001 answered {reply.status_code}: {reply.text}")
    body = reply.json()
    probabilities = body["outputs"]["probabilities"][0]
    ranked = sorted(zip(CLASSES, probabilities, strict=True), key=lambda p: -p[1])[:3]
    table = Table(title=f"sim-001 ran {body['model']} {body['version']} on a 3x32x32 image")
    table.add_column("class")
    table.add_column("probability", justify="right")
    for name, p in ranked:
        table.add_row(name, f"{p:.3f}")
    console.print(table)


def stats_table(mm: ModelManager, window: float) -> Table | None:
    stats = mm.get_model_stats(MODEL, window=window)
    if not stats.versions:
        return None
    table = Table(title=f"{MODEL} over the last {window:.0f} s (from InfluxDB, via the tracker)")
    for col in ("version / device", "inferences", "errors", "per s", "p50 ms", "p95 ms", "max ms"):
        table.add_column(col, justify="left" if col.startswith("version") else "right")
    for v in stats.versions:
        rows = [(v.version, v, "bold"), *((f"  {d.device_id}", d, "") for d in v.devices)]
        for label, f, style in rows:
            table.add_row(
                label,
                f"{f.count:,}",
                f"{f.error_rate:.2%}",
                f"{f.throughput:.1f}",
                f"{f.latency_p50_ms:.3f}",
                f"{f.latency_p95_ms:.3f}",
                f"{f.latency_max_ms:.3f}",
                style=style,
            )
    return table


def inferences_on(mm: ModelManager, version: str, device_id: str, window: float) -> int:
    """Inferences of ``version`` on ``device_id`` that have reached InfluxDB in the last
    ``window`` seconds."""
    stats = mm.get_model_stats(MODEL, window=window, version=version)
    return sum(d.count for v in stats.versions for d in v.devices if d.device_id == device_id)


async def _evaluate(settings: Settings, window: float) -> EvaluateReply:
    # The tracker's comparison is on the bus only: ask as the stack's NATS admin.
    user, password = StackLayout.of(settings).nats_login()
    client = NatsClient()
    await client.connect(
        settings.nats.url,
        user=user,
        password=password,
        connect_timeout=5,
        allow_reconnect=False,
    )
    try:
        body = EvaluateRequest(model=MODEL, window_seconds=window).model_dump_json().encode()
        rpc = TrackerRpc.EVALUATE
        message = await client.request(rpc.subject, body, timeout=10)
        return parse_reply(rpc.subject, message.data, rpc.reply)
    finally:
        await client.close()


def comparison(settings: Settings, version: str, window: float) -> VersionComparison | None:
    """The tracker's comparison of ``version`` with its predecessor, once it has one.

    The tracker picks the predecessor itself: the nearest earlier version that ran on the
    same devices in the window. What it picked is in the answer (``baseline_version``).
    """
    reply = asyncio.run(_evaluate(settings, window))
    return next((c for c in reply.comparisons if c.version == version), None)


def _signed(value: float | None, unit: str) -> str:
    """A change in percent (relative) or in points (absolute); ``?`` for no bound."""
    if value is None:
        return "?"
    return f"{value:+.0%}" if unit == "%" else f"{value * 100:+.2f} pt"


VERDICT_STYLE = {
    "regressed": "red",
    "insufficient_data": "yellow",
    "improved": "green",
    "unchanged": "green",
}


def comparison_table(c: VersionComparison) -> Table:
    table = Table(title=f"{c.version} against {c.baseline_version} on {', '.join(c.devices)}")
    confidence = f"{1 - 2 * c.significance_level:.0%} interval"
    for col in ("", c.baseline_version, c.version, "change", confidence, "verdict"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("inferences", f"{c.baseline_count:,}", f"{c.count:,}", "", "", "")
    table.add_row("intervals", f"{c.baseline_intervals:,}", f"{c.intervals:,}", "", "", "")
    for m in c.metrics:
        if m.metric == "latency_p95_ms":
            label, old, new, unit = (
                "p95 latency (ms)",
                f"{m.baseline_value:.3f}",
                f"{m.value:.3f}",
                "%",
            )
        else:
            label, old, new, unit = "error rate", f"{m.baseline_value:.2%}", f"{m.value:.2%}", "pt"
        table.add_row(
            label,
            old,
            new,
            "" if m.change is None else _signed(m.change, unit),
            f"{_signed(m.change_low, unit)} .. {_signed(m.change_high, unit)}",
            f"[{VERDICT_STYLE[m.verdict]}]{m.verdict.replace('_', ' ')}[/]",
        )
    verdict = f"[{VERDICT_STYLE[c.verdict]}]{c.verdict.replace('_', ' ')}[/]"
    if c.regressed:
        verdict += f" ({', '.join(c.regressed)})"
    table.caption = (
        f"tracker verdict: {verdict}\n[dim]latency change: the typical ratio of an interval's "
        "p95 (a rank estimate), not the ratio of the p95 figures[/dim]"
    )
    return table


# ---- the demo ---------------------------------------------------------------------------


def run(config: Path, devices: int) -> None:
    started = time.monotonic()
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise DemoError(str(exc)) from None
    layout = StackLayout.of(settings)

    step(1, "The stack: NATS, Mosquitto, InfluxDB and seven services")
    console.print(f"$ edgeaiforge up --config {config}", style="dim", highlight=False)
    try:
        with console.status("starting what is not running yet, waiting for health checks"):
            rows = up(settings, config)
    except StackError as exc:
        raise DemoError(str(exc)) from None
    table = Table()
    for col in ("component", "pid", "state", "detail"):
        table.add_column(col)
    for r in rows:
        state = "[green]healthy[/green]" if r.healthy else "[red]not healthy[/red]"
        table.add_row(r.name, str(r.pid or ""), state, r.detail)
    console.print(table)
    if not all(r.healthy for r in rows):
        raise DemoError(f"the stack is not healthy; see the logs in {layout.logs}")
    url = api_url(settings)

    step(2, "An admin API key")
    token = admin_token(settings, config, layout)

    with ModelManager(url, token) as mm:
        existing = versions_of(mm)
        aliases = mm.get_model(MODEL).aliases if existing else {}

        step(3, "A model built here, uploaded, validated and analysed")
        baseline_version = aliases.get(ALIAS) or ("1.0.0" if existing else None)
        if baseline_version is not None and any(v.version == baseline_version for v in existing):
            console.print(f"{MODEL} {baseline_version} is already in the registry: reusing it")
        else:
            baseline_version = next_version(existing)
            upload(mm, baseline_version, width=8, parent=None)
        checked(mm, baseline_version)

        step(4, f"{devices} simulated devices, enrolled through the API")
        port = start_fleet(token, config, layout, devices)
        listed = [d for d in mm.list_devices(group=GROUP) if d.online]
        table = Table(title=f"group {GROUP!r}: {len(listed)} devices online")
        for col in ("device", "active model", "enrolled"):
            table.add_column(col)
        for d in listed:
            active = f"{d.active_model} {d.active_version}" if d.active_model else "-"
            table.add_row(d.device_id, active, f"{d.enrolled_at:%Y-%m-%d %H:%M:%S}")
        console.print(table)

        step(5, f"Deploy {baseline_version} in waves: 1 device, then half, then all")
        created = mm.deploy_model(
            MODEL,
            version=baseline_version,
            group=GROUP,
            strategy="waves",
            waves=("1", "50%", "100%"),
        )
        follow(mm, created)
        # The comparison in step 9 looks only at what ran from here on: a version that
        # sim-001 ran before (in an earlier demo run) must not become the tracker's
        # baseline, which is the nearest earlier version that ran in the window.
        rolled_out = time.monotonic()

        def since_rollout() -> float:
            return max(1.0, time.monotonic() - rolled_out)

        mm.set_alias(MODEL, ALIAS, baseline_version)
        console.print(f"alias {ALIAS!r} -> {baseline_version}")

        step(6, "Inference on a device")
        wait_for(
            f"sim-001 serving {baseline_version}",
            lambda: True if _serving(port, baseline_version) else None,
            60,
        )
        infer(port)

        step(7, "Live statistics from InfluxDB")
        window = 30.0

        def has_stats() -> Table | None:
            stats = mm.get_model_stats(MODEL, window=30, version=baseline_version)
            return stats_table(mm, window) if stats.versions else None

        console.print(wait_for("waiting for the devices' first metrics batches", has_stats, 60))

        step(8, "A second version, canary-deployed to one device")
        candidate = next_version(versions_of(mm))
        # Narrower convolutions: fewer MACs, so the canary should be faster, not slower.
        upload(mm, candidate, width=6, parent=baseline_version)
        checked(mm, candidate)
        # The comparison needs enough inferences of the baseline on the canary device too.
        need = settings.performance_tracking.min_inferences
        wait_for(
            f"{need} inferences of {baseline_version} on sim-001 (what it runs before the canary)",
            lambda: inferences_on(mm, baseline_version, "sim-001", since_rollout()) >= need or None,
            120,
            every=1.0,
        )
        canary = mm.deploy_model(MODEL, "sim-001", version=candidate)
        follow(mm, canary)

        # A verdict once the samples tell; after a minute, whatever the tracker says (it
        # may be "insufficient data" on a busy machine: that is its honest answer).
        asked_from = time.monotonic()

        def settled() -> VersionComparison | None:
            c = comparison(settings, candidate, since_rollout())
            patient = time.monotonic() - asked_from < 60
            return None if c is None or (not c.conclusive and patient) else c

        verdict = wait_for(
            f"the tracker's verdict on {candidate} against its predecessor on sim-001",
            settled,
            120,
            every=2.0,
        )
        # Titled after the answer: the tracker names the baseline it really compared.
        step(9, f"Compare {verdict.version} with {verdict.baseline_version} on the canary")
        console.print(comparison_table(verdict))

        step(10, f"Promote {candidate}: move {ALIAS!r} and deploy it everywhere")
        if verdict.regressed:
            # In production the regression event is the gate; the demo goes on to show the
            # rollout, and says so.
            console.print(
                "[yellow]The tracker flags a regression (eaf.model.performance.regressed is "
                "the rollout gate); the demo promotes anyway to show the rollout.[/yellow]"
            )
        mm.set_alias(MODEL, ALIAS, candidate)
        console.print(f"alias {ALIAS!r} -> {candidate}")
        promoted = mm.deploy_model(
            MODEL, version=ALIAS, group=GROUP, strategy="waves", waves=("50%", "100%")
        )
        final = follow(mm, promoted)
        last = stats_table(mm, 120.0)
        if last is not None:
            console.print(last)

    elapsed = time.monotonic() - started
    summary = "\n".join(
        [
            f"[bold green]Done in {elapsed:.0f} s.[/bold green]",
            f"{MODEL}: {baseline_version} -> {candidate} ({ALIAS}), on {len(final.targets)} "
            f"devices of group {GROUP!r}",
            f"canary verdict on {verdict.version} against {verdict.baseline_version}: "
            f"{verdict.verdict.replace('_', ' ')} "
            f"(p95 {verdict.baseline_latency_p95_ms:.3f} -> {verdict.latency_p95_ms:.3f} ms)",
            "",
            "The stack and the fleet keep running. Try:",
            f"  export EAF_API_URL={url}",
            f"  export EAF_API_TOKEN=$(cat {layout.secrets / TOKEN_FILE})",
            f"  .venv/bin/edgeaiforge model show {MODEL} {ALIAS}",
            f"  .venv/bin/edgeaiforge stats {MODEL} --devices",
            "  .venv/bin/edgeaiforge status",
            "  .venv/bin/edgeaiforge down      # stops everything the demo started",
        ]
    )
    console.print()
    console.print(Panel(summary, title="EdgeAIForge demo", expand=False))


def _serving(port: int, version: str) -> bool:
    try:
        reply = httpx.get(f"http://127.0.0.1:{port}/v1/status", timeout=2)
        active = reply.json().get("active") or {}
    except (httpx.HTTPError, ValueError, json.JSONDecodeError):
        return False
    return bool(active.get("version") == version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config/edgeaiforge.toml"))
    parser.add_argument("--devices", type=int, default=6, help="simulated devices (at least 2)")
    args = parser.parse_args()
    try:
        run(args.config, max(2, args.devices))
    except (DemoError, EdgeAIForgeError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}", highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

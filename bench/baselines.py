"""The limits our figures are measured against, on the same servers in the same run."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def _client(host: str, port: int, user: tuple[str, str], name: str) -> mqtt.Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{secrets.token_hex(3)}",
        protocol=mqtt.MQTTv5,
    )
    c.username_pw_set(*user)
    c.connect(host, port, keepalive=60)
    return c


def raw_mqtt_mb_per_s(
    host: str, port: int, user: tuple[str, str], *, chunk_size: int, total_bytes: int
) -> dict[str, float]:
    """paho QoS 1 publish → one subscriber through Mosquitto, same chunk size."""
    topic = f"eaf/v1/bench/raw/{secrets.token_hex(4)}"
    count = max(1, total_bytes // chunk_size)
    payload = os.urandom(chunk_size)
    got = 0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal got
        got += 1
        if got == count:
            done.set()

    sub = _client(host, port, user, "raw-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    subscribed.wait(10)
    pub = _client(host, port, user, "raw-pub")
    pub.loop_start()
    start = time.perf_counter()
    for _ in range(count):
        pub.publish(topic, payload, qos=1)
    if not done.wait(600):
        raise RuntimeError(f"raw MQTT baseline: only {got}/{count} messages arrived")
    elapsed = time.perf_counter() - start
    pub.loop_stop()
    sub.loop_stop()
    pub.disconnect()
    sub.disconnect()
    return {
        "mb_per_s": count * chunk_size / 1e6 / elapsed,
        "seconds": elapsed,
        "bytes": count * chunk_size,
    }


def raw_fanout_seconds(
    host: str,
    port: int,
    user: tuple[str, str],
    *,
    subscribers: int,
    chunk_size: int,
    total_bytes: int,
) -> dict[str, float]:
    """paho delivering the same bytes to ``subscribers`` subscribers (QoS 1)."""
    topic = f"eaf/v1/bench/fanout/{secrets.token_hex(4)}"
    count = max(1, total_bytes // chunk_size)
    payload = os.urandom(chunk_size)
    lock = threading.Lock()
    finished = 0
    all_done = threading.Event()
    clients = []
    ready = threading.Barrier(subscribers + 1, timeout=60)

    for i in range(subscribers):
        seen = 0

        def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
            nonlocal finished
            _c._eaf_seen += 1  # type: ignore[attr-defined]
            if _c._eaf_seen == count:  # type: ignore[attr-defined]
                with lock:
                    finished += 1
                    if finished == subscribers:
                        all_done.set()

        c = _client(host, port, user, f"fan-{i}")
        c._eaf_seen = seen  # type: ignore[attr-defined]
        c.on_message = on_message
        c.on_subscribe = lambda *a: _arrive(ready)
        c.loop_start()
        c.subscribe(topic, qos=1)
        clients.append(c)
    ready.wait()
    pub = _client(host, port, user, "fan-pub")
    pub.loop_start()
    start = time.perf_counter()
    for _ in range(count):
        pub.publish(topic, payload, qos=1)
    if not all_done.wait(900):
        raise RuntimeError(f"raw fan-out baseline: {finished}/{subscribers} subscribers complete")
    elapsed = time.perf_counter() - start
    for c in [*clients, pub]:
        c.loop_stop()
        c.disconnect()
    return {"seconds": elapsed, "subscribers": subscribers, "bytes": count * chunk_size}


def direct_influx_points_per_s(
    url: str, database: str, lines: list[bytes], batch: int
) -> dict[str, float]:
    """Batched ``/write`` of ready-made line protocol straight to InfluxDB."""
    with httpx.Client(timeout=60) as client:
        client.post(f"{url}/query", params={"q": f'CREATE DATABASE "{database}"'})
        start = time.perf_counter()
        for i in range(0, len(lines), batch):
            r = client.post(
                f"{url}/write",
                params={"db": database, "precision": "ns"},
                content=b"\n".join(lines[i : i + batch]),
            )
            r.raise_for_status()
        elapsed = time.perf_counter() - start
    return {"points_per_s": len(lines) / elapsed, "seconds": elapsed, "points": len(lines)}


def sha256_mb_per_s(path: Path) -> dict[str, float]:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    start = time.perf_counter()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    elapsed = time.perf_counter() - start
    size = path.stat().st_size
    return {"mb_per_s": size / 1e6 / elapsed, "seconds": elapsed, "bytes": size}


def ort_session_seconds(path: Path) -> dict[str, float]:
    """onnxruntime CPU session creation for the model at ``path``."""
    import onnxruntime as ort

    start = time.perf_counter()
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {"seconds": time.perf_counter() - start}


def file_write_mb_per_s(path: Path, target: Path) -> dict[str, float]:
    """Copy ``path`` to ``target`` in 2 MiB blocks and fsync: what the disk takes."""
    data = path.read_bytes()
    start = time.perf_counter()
    with target.open("wb") as f:
        for i in range(0, len(data), 2 << 20):
            f.write(data[i : i + (2 << 20)])
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    target.unlink()
    return {"mb_per_s": len(data) / 1e6 / elapsed, "seconds": elapsed, "bytes": len(data)}


def _arrive(barrier: threading.Barrier) -> None:
    barrier.wait()

"""The device agent: MQTT session, desired-state handling, transfer, activation, rollback.

One ``EdgeRuntime`` per device. ``run()`` keeps a connection to the broker with jittered
back-off (state that must survive lives on disk, not in the loop), follows the retained
``desired`` manifest, pulls chunks with a window of outstanding requests, activates the
new model atomically while inference continues, and reports every state change on the
retained ``state`` topic. See ``docs/device-protocol.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime import _faults
from edge_runtime._model import InferenceRecorder, ModelHost
from edge_runtime._state import Connection, ConnectionState, Installed, StateDir
from edge_runtime._transfer import (
    ChunkOutcome,
    Transfer,
    check_manifest,
    open_manifest_key,
)
from edge_runtime.errors import EdgeRuntimeError, InferenceError, TransferRefused
from edge_runtime.metrics import MetricsCollector, MetricsReporter
from edge_runtime.spool import MetricsSpool
from schemas.events import TargetState
from schemas.manifest import Manifest
from schemas.topics import Topics
from schemas.transfer import (
    CHUNK_ARTIFACT_PROPERTY,
    CHUNK_INDEX_PROPERTY,
    MAX_INDEXES_PER_REQUEST,
    ActiveModel,
    ChunkRequest,
    DeploymentProgress,
    DeviceState,
    Rejection,
    RejectionCode,
)

__all__ = ["NOT_AUTHORIZED", "RUNTIME_VERSION", "EdgeRuntime"]

RUNTIME_VERSION = "0.1.0"
_FINAL = {"active", "failed", "rolled_back"}
_PROGRESS_INTERVAL = 0.5
_MAX_QUEUED_REPORTS = 200
_NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
#: Seconds a cancelled task may run on before it is cancelled again (see _cancel_and_wait):
#: the driver and the reporter have nothing to clean up. A session is given a moment for
#: its graceful disconnect; cut short, the broker sends the will (``online`` = 0), which
#: says the same as the goodbye: a stop must not wait for a broker that does not answer.
_CANCEL_AGAIN = 0.1
_SESSION_CANCEL_AGAIN = 0.5
#: Seconds a stop waits for the broker to take the goodbye (``online`` = 0).
_GOODBYE_TIMEOUT = 0.5
#: The longest pause between attempts while the broker refuses the credentials.
_REFUSED_MAX = 600.0
#: How often a refused device looks for a new enrolment in its state directory.
_ENROLMENT_POLL = 1.0
#: Logged once when the broker starts refusing the device's credentials.
NOT_AUTHORIZED = (
    "not authorized: this device was removed or its credentials revoked; enrol it again"
)


async def _cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], *, again_after: float = _CANCEL_AGAIN
) -> None:
    """Cancel ``tasks`` and return when every one has ended; their outcomes stay in them.

    A task still running after a cancellation is cancelled again: in Python 3.11
    ``asyncio.wait_for``, which aiomqtt's publish, subscribe and disconnect wait in, returns
    its result instead of raising when the result arrives together with the cancellation
    (a PUBACK read in the same pass of the event loop), so a loop around such a call goes on
    as if it had never been cancelled, and a plain ``await task`` waits for it forever.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after)


def _chain(first: InferenceRecorder | None, second: Callable[..., None]) -> InferenceRecorder:
    """One recorder that calls both (the caller's own and the metrics collector)."""

    def record(*, model: str, version: str, latency_ms: float, ok: bool) -> None:
        if first is not None:
            first(model=model, version=version, latency_ms=latency_ms, ok=ok)
        second(model, version, latency_ms, ok=ok)

    return record


class EdgeRuntime:
    """One device's runtime, bound to an enrolled state directory."""

    def __init__(
        self,
        state_dir: Path,
        *,
        mqtt_host: str | None = None,
        mqtt_port: int | None = None,
        window_size: int | None = None,
        stall_timeout: float | None = None,
        threads: int = 1,
        prepack_weights: bool = False,
        recorder: InferenceRecorder | None = None,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        reconnect_refused: float = 60.0,
        metrics_interval: float | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """``metrics_interval`` (seconds) turns on inference metrics: each interval a batch
        goes to the on-disk spool (``metrics.db`` in the state dir) and from there to the
        device's ``metrics`` topic whenever the broker is reachable.
        ``prepack_weights`` trades memory for speed: see ``ModelHost``.
        ``reconnect_min``/``reconnect_max`` bound the back-off after a network error;
        while the broker refuses the credentials, attempts start ``reconnect_refused``
        seconds apart (doubling to 10 minutes) and a new enrolment is tried at once."""
        self.state = StateDir(state_dir)
        self._enrolled_stamp = self._enrolment_stamp()
        self.config = self.state.enrollment()
        self.device_id = self.config.device_id
        self.topics = Topics(self.config.mqtt.topic_prefix)
        self._mqtt_override = (mqtt_host, mqtt_port)
        self.mqtt_host = mqtt_host or self.config.mqtt.host
        self.mqtt_port = mqtt_port or self.config.mqtt.port
        self.window_size = window_size or self.config.window_size
        self.stall_timeout = stall_timeout or self.config.stall_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.reconnect_refused = reconnect_refused
        #: The link to the broker; also written to ``status.json`` on every change.
        self.connection = Connection(ConnectionState.CONNECTING, int(time.time()), pid=os.getpid())
        #: Set by a stop once the goodbye is on its way: no state report may follow it.
        self._leaving = False
        self.metrics: MetricsReporter | None = None
        if metrics_interval:
            collector = MetricsCollector(self.device_id)
            self.metrics = MetricsReporter(
                collector,
                MetricsSpool(Path(state_dir) / "metrics.db"),
                topics=self.topics,
                interval=metrics_interval,
            )
            recorder = _chain(recorder, collector.record)
        self.host = ModelHost(threads=threads, recorder=recorder, prepack=prepack_weights)
        self._log = log or (lambda _msg: None)
        self._platform_key = self.state.platform_key()
        self._private_key = self.state.private_key()
        self._client: aiomqtt.Client | None = None
        self._job: Transfer | None = None
        self._finishing: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._report_wake = asyncio.Event()
        #: Set with each transition: it ends the progress throttle's pause at once.
        self._transition_wake = asyncio.Event()
        self._progress_built = 0.0
        self._reports: list[DeviceState] = []
        self._progress: DeploymentProgress | None = None
        self._rejection: Rejection | None = None
        self._broadcast_topic: str | None = None
        self._connected = asyncio.Event()
        self._established = False
        self._latest: DeviceState | None = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Condition()
        #: Callers in ``wait_for``: only then is a change worth a notification task.
        self._waiters = 0
        #: Counters for operators and tests.
        self.stats: dict[str, int] = {
            "chunks_requested": 0,
            "chunks_received": 0,
            "chunks_refused": 0,
            "duplicates": 0,
            "connections": 0,
            "refused": 0,
        }

    # ---- public API ------------------------------------------------------------------

    @property
    def active(self) -> ActiveModel | None:
        return self.host.active

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def snapshot(self) -> DeviceState:
        """What the device would report now."""
        installed = self.state.installed()
        return DeviceState(
            device_id=self.device_id,
            reported_at=int(time.time()),
            active=self.host.active or installed.active,
            previous=installed.previous,
            deployment=self._progress,
            rejection=self._rejection,
            runtime_version=RUNTIME_VERSION,
        )

    async def infer(self, inputs: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run the active model (on sample inputs when ``inputs`` is None)."""
        return await self.host.infer(inputs)

    async def simulate(self, rate: float) -> None:
        """Run ``rate`` inferences a second on generated inputs until cancelled (demos,
        benchmarks: ``--simulate RATE``); nothing runs until a model is active."""
        interval = 1.0 / rate
        next_at = time.monotonic()
        while True:
            next_at += interval
            with contextlib.suppress(EdgeRuntimeError):
                await self.infer()
            delay = next_at - time.monotonic()
            if delay < -1.0:  # fell behind (a slow model): do not catch up in a burst
                next_at = time.monotonic()
            await asyncio.sleep(max(0.0, delay))

    async def publish_metrics(self, payload: bytes) -> bool:
        """Publish one metrics message on this device's ``metrics`` topic (QoS 1).

        Returns False, without raising, when the device is offline: the caller spools.
        """
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        try:
            await client.publish(self.topics.metrics(self.device_id), payload, qos=1)
        except aiomqtt.MqttError:
            return False
        return True

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def wait_for(self, predicate: Callable[[EdgeRuntime], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` holds after some state change."""
        self._waiters += 1
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate(self))
        finally:
            self._waiters -= 1

    @property
    def stopping(self) -> bool:
        """``stop()`` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """End ``run()``: it says goodbye and returns within about a second."""
        self._stop.set()

    async def run(self) -> None:
        """Load the installed model, then stay connected until ``stop()`` or cancellation.

        A stop says goodbye (``online`` = 0, retained: a clean disconnect sends no will)
        and returns within about a second whatever the runtime was doing: connected, in
        a transfer (its progress is on disk), connecting, or waiting to try again.
        """
        await self._load_installed()
        self._set_connection(ConnectionState.CONNECTING, force=True)
        backoff = self.reconnect_min
        refused_backoff = self.reconnect_refused
        stopper = asyncio.create_task(self._stop.wait())
        reporter = (
            asyncio.create_task(self.metrics.run_with(self.publish_metrics))
            if self.metrics is not None
            else None
        )
        session: asyncio.Task[None] | None = None
        try:
            while not self._stop.is_set():
                session = asyncio.create_task(self._session())
                done, _ = await asyncio.wait({session, stopper}, return_when="FIRST_COMPLETED")
                if session not in done:
                    break  # stopped: the goodbye and the rest below
                error = session.exception()
                if error is not None and not isinstance(error, aiomqtt.MqttError):
                    raise error
                if self._established:
                    backoff = self.reconnect_min
                    self._established = False
                if _credentials_refused(error):
                    # Removed, or enrolled again elsewhere: trying often would not help.
                    self.stats["refused"] += 1
                    if self.connection.state is not ConnectionState.NOT_AUTHORIZED:
                        self._log(NOT_AUTHORIZED)
                    self._set_connection(ConnectionState.NOT_AUTHORIZED, _describe(error))
                    delay = random.uniform(refused_backoff / 2, refused_backoff)  # noqa: S311
                    refused_backoff = min(
                        refused_backoff * 2, max(_REFUSED_MAX, self.reconnect_refused)
                    )
                    await self._pause(delay, stopper, watch_enrolment=True)
                    continue
                refused_backoff = self.reconnect_refused
                self._log(f"disconnected: {_describe(error)}; reconnecting")
                self._set_connection(ConnectionState.DISCONNECTED, _describe(error))
                # Full jitter: devices that lost the broker together do not return together.
                delay = random.uniform(0, backoff)  # noqa: S311 - not crypto
                backoff = min(backoff * 2, self.reconnect_max)
                await self._pause(delay, stopper)
        finally:
            stopper.cancel()
            if session is not None:
                if not session.done():
                    # Stopped or cancelled from outside: the goodbye, then the session
                    # ends (before the model host closes).
                    await self._say_goodbye()
                    await _cancel_and_wait([session], again_after=_SESSION_CANCEL_AGAIN)
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await session
            if reporter is not None:
                await _cancel_and_wait([reporter])  # it waits in publishes too
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
                assert self.metrics is not None
                # The last partial interval goes to the spool; it is sent on the next run.
                await asyncio.to_thread(self.metrics.tick)
                self.metrics.spool.close()
            if self._finishing is not None:
                await _cancel_and_wait([self._finishing])
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._finishing
            if self._job is not None:
                self._job.close()  # the bitmap is saved: the transfer resumes next time
            self.host.close()
            self._set_connection(ConnectionState.STOPPED)

    async def _say_goodbye(self) -> None:
        """Publish ``online`` = 0 (retained) if connected, waiting briefly for the broker."""
        client = self._client
        if client is None or not self._connected.is_set():
            return
        self._leaving = True
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(_GOODBYE_TIMEOUT):
                await client.publish(self.topics.online(self.device_id), b"0", qos=1, retain=True)

    async def _pause(
        self, delay: float, stopper: asyncio.Task[Any], *, watch_enrolment: bool = False
    ) -> None:
        """Wait ``delay`` seconds before the next attempt; a stop ends the wait at once, and
        so does (with ``watch_enrolment``) a new enrolment in the state directory."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (left := deadline - loop.time()) > 0 and not stopper.done():
            step = min(left, _ENROLMENT_POLL) if watch_enrolment else left
            await asyncio.wait({stopper}, timeout=step)
            if watch_enrolment and self._enrolment_stamp() != self._enrolled_stamp:
                if self._reload_enrolment():
                    return

    def _enrolment_stamp(self) -> int:
        try:
            return self.state.device_file.stat().st_mtime_ns
        except OSError:
            return 0

    def _reload_enrolment(self) -> bool:
        """Take a new enrolment of this device (``edge-runtime enroll`` run again while the
        runtime waits, refused): its credentials and keys. False if it cannot be used."""
        stamp = self._enrolment_stamp()
        try:
            config = self.state.enrollment()
            platform_key = self.state.platform_key()
            private_key = self.state.private_key()
        except (EdgeRuntimeError, OSError, ValueError) as exc:
            self._log(f"the enrolment in {self.state.root} cannot be read yet: {exc}")
            return False
        self._enrolled_stamp = stamp
        if config.device_id != self.device_id:
            self._log(f"{self.state.root} now holds device {config.device_id}: restart to run it")
            return False
        self.config, self._platform_key, self._private_key = config, platform_key, private_key
        host, port = self._mqtt_override
        self.mqtt_host = host or config.mqtt.host
        self.mqtt_port = port or config.mqtt.port
        self._log("a new enrolment was found: connecting with its credentials")
        return True

    def _set_connection(
        self, state: ConnectionState, detail: str = "", *, force: bool = False
    ) -> None:
        """Record the link's state; ``status.json`` is written when the state changes."""
        if state is self.connection.state and not force:
            return
        self.connection = Connection(state, int(time.time()), detail, pid=os.getpid())
        # A hint for other processes: a full or read-only disk must not stop the device.
        with contextlib.suppress(OSError):
            self.state.save_connection(self.connection)

    # ---- connection --------------------------------------------------------------------

    async def _session(self) -> None:
        online = self.topics.online(self.device_id)
        mqtt = self.config.mqtt
        client = aiomqtt.Client(
            self.mqtt_host,
            self.mqtt_port,
            username=mqtt.username,
            password=mqtt.password,
            identifier=mqtt.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(online, b"0", qos=1, retain=True),
            keepalive=15,
            timeout=10,
            max_inflight_messages=max(20, self.window_size),
            # paho leaves Nagle on: a chunk request would wait for the broker's delayed ACK
            # of the previous small packet (up to 40 ms) behind the PUBACKs of chunks.
            socket_options=[_NO_DELAY],
        )
        async with client:
            self._client = client
            self.stats["connections"] += 1
            tasks: list[asyncio.Task[None]] = []
            try:
                await client.subscribe(self.topics.desired(self.device_id), qos=1)
                await client.subscribe(self.topics.device_chunks(self.device_id), qos=1)
                self._broadcast_topic = None
                if self._job is not None:
                    await self._follow_broadcast(self._job.manifest)
                await client.publish(online, b"1", qos=1, retain=True)
                self._connected.set()
                self._established = True
                self._set_connection(ConnectionState.CONNECTED)
                self._log("connected")
                self._report(transition=True)
                tasks = [
                    asyncio.create_task(self._receive(client)),
                    asyncio.create_task(self._drive(client)),
                    asyncio.create_task(self._reporter(client)),
                ]
                # The first to end ends the session: the connection is lost, or a publish of
                # the driver or the reporter failed (no PUBACK in time). Noticed at once,
                # not with the next message, which may never come (after the last chunk):
                # the next session reports again and resumes the transfer.
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is not None:
                        raise error
                raise aiomqtt.MqttError("the session ended")
            finally:
                self._connected.clear()
                self._client = None
                # They wait in publishes and subscribes: see _cancel_and_wait.
                await _cancel_and_wait(tasks)
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await task

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                await self._on_message(message)
            except aiomqtt.MqttError:
                raise
            except Exception as exc:  # a bad message must not end the runtime
                self._log(f"message on {message.topic} not handled: {exc!r}")

    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        if topic == self.topics.desired(self.device_id):
            await self._on_desired(bytes(payload))
        else:
            self._on_chunk(message, bytes(payload))

    # ---- desired state -----------------------------------------------------------------

    async def _on_desired(self, payload: bytes) -> None:
        if not payload:
            return  # the platform cleared the desired state
        try:
            manifest = check_manifest(
                payload,
                device_id=self.device_id,
                platform_key=self._platform_key,
                sequences=self.state.sequences(),
            )
        except TransferRefused as refusal:
            self._refuse(refusal)
            return
        deployment = manifest.deployment_id
        outcome = self.state.outcomes().get(deployment)
        job = self._job
        if job is not None and job.deployment_id == deployment:
            job.manifest = manifest  # a re-issue (fresh expiry) of what is in progress
            return
        if outcome in _FINAL:
            # Finished already (the retained manifest stays until replaced). A re-issue
            # means the platform missed the outcome: say it again.
            if self._progress is None or self._progress.deployment_id != deployment:
                self._set_progress(manifest, TargetState(outcome))
            else:
                self._report(transition=True)
            return
        if self._finishing is not None and not self._finishing.done():
            self._log("activation in progress; the new manifest waits for the next delivery")
            return
        active = self.host.active
        if active is not None and active.artifact_id == manifest.artifact_id:
            # Already running these bytes: adopt the new identity without a transfer.
            self.state.accept_sequence(manifest.model, manifest.sequence)
            info = _active_of(manifest)
            await self._install(info, self.state.model_path(info.artifact_id), manifest)
            return
        installed = self.state.installed()
        if (
            manifest.rollback
            and installed.previous is not None
            and installed.previous.artifact_id == manifest.artifact_id
            and self.state.model_path(manifest.artifact_id).exists()
        ):
            self.state.accept_sequence(manifest.model, manifest.sequence)
            self._cancel_job()
            self._set_progress(manifest, TargetState.ACTIVATING)
            self._finishing = asyncio.create_task(
                self._activate(manifest, self.state.model_path(manifest.artifact_id))
            )
            return
        try:
            dek = open_manifest_key(manifest, self._private_key)
        except TransferRefused as refusal:
            self._refuse(refusal)
            return
        self.state.accept_sequence(manifest.model, manifest.sequence)
        self._cancel_job()
        self.state.clear_staging(keep=manifest.artifact_id)
        self._job = Transfer(self.state, manifest, payload, dek)
        self._log(f"deployment {deployment}: {manifest.model}@{manifest.version} accepted")
        await self._follow_broadcast(manifest)
        self._set_progress(manifest, TargetState.DOWNLOADING, job=self._job)
        if self._job.complete:
            self._start_finish(self._job)
        self._wake.set()

    async def _follow_broadcast(self, manifest: Manifest) -> None:
        client = self._client
        if client is None or not manifest.broadcast:
            return
        topic = self.topics.artifact_chunks(manifest.artifact_id)
        if self._broadcast_topic == topic:
            return
        if self._broadcast_topic is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(self._broadcast_topic)
        await client.subscribe(topic, qos=1)
        self._broadcast_topic = topic

    def _cancel_job(self) -> None:
        if self._job is not None:
            self._job.close()
            self._job = None

    # ---- chunks ------------------------------------------------------------------------

    def _on_chunk(self, message: aiomqtt.Message, payload: bytes) -> None:
        job = self._job
        if job is None:
            return
        props = _user_properties(message.properties)
        try:
            index = int(props.get(CHUNK_INDEX_PROPERTY, ""))
        except ValueError:
            self.stats["chunks_refused"] += 1
            return
        artifact = props.get(CHUNK_ARTIFACT_PROPERTY, "")
        try:
            outcome = job.accept(index, artifact, payload)
        except TransferRefused as refusal:
            self.stats["chunks_refused"] += 1
            self._fail_job(job, refusal)
            return
        if outcome is ChunkOutcome.REFUSED:
            self.stats["chunks_refused"] += 1
            if job.last_refusal is not None:
                self._refuse(job.last_refusal)
        elif outcome is ChunkOutcome.DUPLICATE:
            self.stats["duplicates"] += 1
        else:
            self.stats["chunks_received"] += 1
            # The progress report goes out at most every _PROGRESS_INTERVAL anyway: build it
            # (a snapshot reads the installed models from disk) a few times a second, not
            # for every chunk. Waiters still hear of every chunk.
            now = time.monotonic()
            if job.complete or now - self._progress_built >= _PROGRESS_INTERVAL / 4:
                self._progress_built = now
                self._set_progress(job.manifest, TargetState.DOWNLOADING, job=job, throttle=True)
            else:
                self._changed_soon()
            if job.complete:
                self._start_finish(job)
        if job.pulling or self._job is not job:
            # A window slot is free (or the job ended). A device waiting for the broadcast
            # has nothing to request: its driver wakes on its own for the stall check.
            self._wake.set()

    async def _drive(self, client: aiomqtt.Client) -> None:
        """Keep a window of chunk requests outstanding for the current transfer."""
        while True:
            job = self._job
            if job is not None and not job.complete:
                if job.stalled(self.stall_timeout):
                    self._log(f"stalled; re-requesting {len(job.missing())} missing chunks")
                indexes = job.next_request(self.window_size)
                for start in range(0, len(indexes), MAX_INDEXES_PER_REQUEST):
                    part = indexes[start : start + MAX_INDEXES_PER_REQUEST]
                    await self._request(client, job, part)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.5, self.stall_timeout / 4)):
                    await self._wake.wait()

    async def _request(self, client: aiomqtt.Client, job: Transfer, indexes: list[int]) -> None:
        request = ChunkRequest(
            device_id=self.device_id, deployment_id=job.deployment_id, indexes=tuple(indexes)
        )
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.topics.device_chunks(self.device_id)
        props.CorrelationData = job.deployment_id.encode()
        self.stats["chunks_requested"] += len(indexes)
        await client.publish(
            self.topics.artifact_get(job.manifest.artifact_id),
            request.model_dump_json().encode(),
            qos=1,
            properties=props,
        )

    def _start_finish(self, job: Transfer) -> None:
        if self._finishing is not None and not self._finishing.done():
            return
        self._finishing = asyncio.create_task(self._finish(job))

    async def _finish(self, job: Transfer) -> None:
        self._set_progress(job.manifest, TargetState.VERIFYING, job=job)
        _faults.point("verifying")
        try:
            path = await job.finish()
        except TransferRefused as refusal:
            self._fail_job(job, refusal)
            return
        except OSError as exc:
            self._fail_job(job, TransferRefused(RejectionCode.STORAGE, str(exc)))
            return
        _faults.point("moved")
        if self._job is job:
            self._job = None
        await self._unfollow_broadcast()
        self.state.clear_staging()
        await self._activate(job.manifest, path)

    async def _activate(self, manifest: Manifest, path: Path) -> None:
        self._set_progress(manifest, TargetState.ACTIVATING)
        info = _active_of(manifest)
        try:
            loaded = await self.host.prepare(path, info)
        except InferenceError as exc:
            installed = self.state.installed()
            keep = {m.artifact_id for m in (installed.active, installed.previous) if m}
            if manifest.artifact_id not in keep:
                await asyncio.to_thread(path.unlink, missing_ok=True)
            code = (
                RejectionCode.LOAD_FAILED
                if "does not load" in str(exc)
                else RejectionCode.HEALTH_CHECK
            )
            self._log(f"deployment {manifest.deployment_id} rolled back: {exc}")
            self.state.record_outcome(manifest.deployment_id, "rolled_back")
            self._rejection = Rejection(
                code=code,
                detail=str(exc),
                at=int(time.time()),
                deployment_id=manifest.deployment_id,
            )
            self._set_progress(manifest, TargetState.ROLLED_BACK, detail=str(exc), error_code=code)
            return
        _faults.point("loaded")
        await self._install(loaded.info, path, manifest, loaded=loaded)

    async def _install(
        self,
        info: ActiveModel,
        path: Path,
        manifest: Manifest,
        *,
        loaded: object | None = None,
    ) -> None:
        from edge_runtime._model import LoadedModel

        installed = self.state.installed()
        current = self.host.current
        previous = installed.previous
        if current is not None and current.info.artifact_id != info.artifact_id:
            previous = current.info
        if isinstance(loaded, LoadedModel):
            self.host.switch(loaded)
        elif current is not None:
            self.host.switch(type(current)(info=info, session=current.session, path=path))
        self.state.save_installed(Installed(active=info, previous=previous))
        _faults.point("installed")
        self.state.record_outcome(manifest.deployment_id, "active")
        _faults.point("recorded")
        self._log(f"deployment {manifest.deployment_id}: {info.model}@{info.version} active")
        self._set_progress(manifest, TargetState.ACTIVE)

    def _fail_job(self, job: Transfer, refusal: TransferRefused) -> None:
        self._log(f"deployment {job.deployment_id} failed: {refusal}")
        job.close()
        if self._job is job:
            self._job = None
        self.state.record_outcome(job.deployment_id, "failed")
        self.state.clear_staging()
        self._rejection = Rejection(
            code=refusal.code, detail=refusal.detail, at=int(time.time()),
            deployment_id=job.deployment_id,
        )  # fmt: skip
        self._set_progress(
            job.manifest,
            TargetState.FAILED,
            job=job,
            detail=refusal.detail,
            error_code=refusal.code,
        )
        asyncio.get_running_loop().create_task(self._unfollow_broadcast())

    async def _unfollow_broadcast(self) -> None:
        topic, self._broadcast_topic = self._broadcast_topic, None
        if topic is not None and self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.unsubscribe(topic)

    async def _load_installed(self) -> None:
        installed = self.state.installed()
        for candidate in (installed.active, installed.previous):
            if candidate is None:
                continue
            try:
                loaded = await self.host.prepare(
                    self.state.model_path(candidate.artifact_id), candidate
                )
            except InferenceError as exc:
                self._log(f"installed model {candidate.model}@{candidate.version}: {exc}")
                continue
            self.host.switch(loaded)
            if candidate is not installed.active:
                self.state.save_installed(Installed(active=candidate, previous=None))
            return

    # ---- reporting -----------------------------------------------------------------------

    def _refuse(self, refusal: TransferRefused) -> None:
        self._log(f"refused: {refusal}")
        self._rejection = Rejection(
            code=refusal.code,
            detail=refusal.detail,
            at=int(time.time()),
            deployment_id=refusal.deployment_id,
        )
        self._report(transition=True)

    def _set_progress(
        self,
        manifest: Manifest,
        state: TargetState,
        *,
        job: Transfer | None = None,
        detail: str = "",
        error_code: RejectionCode | None = None,
        throttle: bool = False,
    ) -> None:
        self._progress = DeploymentProgress(
            deployment_id=manifest.deployment_id,
            state=state,
            model=manifest.model,
            version=manifest.version,
            sequence=manifest.sequence,
            chunks_received=job.chunks_received if job else manifest.chunk_count,
            chunk_count=manifest.chunk_count,
            bytes_received=job.bytes_received if job else manifest.size,
            detail=detail,
            error_code=error_code,
        )
        self._report(transition=not throttle)

    def _report(self, *, transition: bool) -> None:
        snapshot = self.snapshot()
        if transition:
            self._reports.append(snapshot)
            del self._reports[:-_MAX_QUEUED_REPORTS]
            self._transition_wake.set()
        self._latest = snapshot
        self._report_wake.set()
        self._changed_soon()

    def _changed_soon(self) -> None:
        if self._waiters:
            asyncio.get_running_loop().create_task(self._notify_change())

    async def _notify_change(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _reporter(self, client: aiomqtt.Client) -> None:
        topic = self.topics.state(self.device_id)
        loop = asyncio.get_running_loop()
        sent: DeviceState | None = None
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            # Every transition in order, then the latest progress (which may coalesce).
            while self._reports:
                state = self._reports[0]
                await self._publish_state(client, topic, state)
                self._reports.pop(0)
                sent = state
            latest = self._latest
            if latest is not None and latest is not sent:
                await self._publish_state(client, topic, latest)
                sent = latest
            # Progress goes out at most every _PROGRESS_INTERVAL; a transition (download
            # finished, model active) does not wait for the pause to end.
            deadline = loop.time() + _PROGRESS_INTERVAL
            self._transition_wake.clear()
            if not self._reports:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._transition_wake.wait()

    async def _publish_state(self, client: aiomqtt.Client, topic: str, state: DeviceState) -> None:
        if self._leaving:
            # After the goodbye a state report would tell the platform the device is
            # still there: wait for the session to end (the next one reports again).
            await asyncio.get_running_loop().create_future()
        await client.publish(topic, state.model_dump_json().encode(), qos=1, retain=True)


def _credentials_refused(error: BaseException | None) -> bool:
    """The broker refused the credentials: CONNACK "bad user name or password" or "not
    authorized" (0x86/0x87 in MQTT 5; paho reports 4/5 of MQTT 3.1.1 as these too)."""
    if not isinstance(error, MqttConnectError):
        return False
    rc = error.rc
    if isinstance(rc, ReasonCode):
        return rc.value in (0x86, 0x87)
    return rc in (4, 5)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "the session ended"
    return f"{type(error).__name__}: {error}" if str(error) else repr(error)


def _active_of(manifest: Manifest) -> ActiveModel:
    return ActiveModel(
        model=manifest.model,
        version=manifest.version,
        sequence=manifest.sequence,
        artifact_id=manifest.artifact_id,
    )


def _user_properties(properties: Properties | None) -> dict[str, str]:
    if properties is None:
        return {}
    pairs = getattr(properties, "UserProperty", None) or []
    return {str(k): str(v) for k, v in pairs}

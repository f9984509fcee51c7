"""The bus on a real nats-server: deduplication, redelivery, dead letters, request/reply."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from pydantic import BaseModel

from schemas.config import NatsConfig
from schemas.events import ModelUploaded
from schemas.rpc import Rpc
from services.common.bus import Bus
from services.common.errors import NotFound
from services.common.middleware import DLQ_PREFIX

SHA = "ef" * 32


def event(**kw: object) -> ModelUploaded:
    fields: dict[str, object] = {
        "model": "m",
        "version": "1.0.0",
        "sequence": 1,
        "artifact_id": SHA,
        "size_bytes": 1,
    }
    fields.update(kw)
    return ModelUploaded.model_validate(fields)


def config(url: str, **kw: object) -> NatsConfig:
    return NatsConfig.model_validate({"url": url, "ack_wait": 2.0, **kw})


async def wait_for(predicate, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_same_event_id_is_stored_once(nats_server) -> None:
    async with Bus(config(nats_server.url), service="test") as bus:
        before = (await bus.js.stream_info("EAF")).state.messages
        e = event()
        await bus.publish(e)
        await bus.publish(e)
        await bus.publish(e.model_copy())
        after = (await bus.js.stream_info("EAF")).state.messages
    assert after - before == 1


async def test_consumer_that_dies_before_ack_gets_the_event_again(
    nats_server, tmp_path: Path, unique_id
) -> None:
    durable = unique_id("dur")
    marker = tmp_path / "received"
    e = event(model=unique_id("m"))
    # A consumer process that receives the event and dies (SIGKILL) before acking.
    script = textwrap.dedent(
        f"""
        import asyncio, pathlib
        from schemas.config import NatsConfig
        from schemas.events import ModelUploaded
        from services.common.bus import Bus

        async def main():
            bus = Bus(NatsConfig(url={nats_server.url!r}, ack_wait=2.0), service="victim")

            @bus.consumer(ModelUploaded, durable={durable!r})
            async def handle(e: ModelUploaded) -> None:
                if e.model == {e.model!r}:
                    pathlib.Path({str(marker)!r}).write_text(str(e.event_id))
                    await asyncio.sleep(3600)

            await bus.start()
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        async with Bus(config(nats_server.url), service="test") as pub:
            await asyncio.sleep(1.0)  # let the victim create its consumer
            await pub.publish(e)
            await wait_for(marker.exists)
    finally:
        proc.kill()
        proc.wait()
    assert marker.read_text() == str(e.event_id)

    received: list[uuid.UUID] = []
    bus = Bus(config(nats_server.url), service="survivor")

    @bus.consumer(ModelUploaded, durable=durable)
    async def handle(ev: ModelUploaded) -> None:
        if ev.model == e.model:
            received.append(ev.event_id)

    async with bus:
        await wait_for(lambda: received)
        await asyncio.sleep(0.5)
    assert received == [e.event_id]


async def test_poison_event_goes_to_dead_letter_and_others_flow(nats_server, unique_id) -> None:
    durable = unique_id("dur")
    tag = unique_id("m")
    poison = event(model=tag, version="6.6.6")
    good = [event(model=tag, version=f"1.0.{i}") for i in range(5)]
    attempts: list[str] = []
    handled: list[str] = []
    bus = Bus(config(nats_server.url, max_deliver=3, retry_backoff=[0.1]), service="test")

    @bus.consumer(ModelUploaded, durable=durable)
    async def handle(ev: ModelUploaded) -> None:
        if ev.model != tag:
            return
        if ev.version == "6.6.6":
            attempts.append(ev.version)
            raise RuntimeError("cannot handle this one")
        handled.append(ev.version)

    async with bus:
        dead: list[tuple[bytes, dict[str, str]]] = []

        async def on_dead(msg) -> None:
            dead.append((msg.data, dict(msg.headers or {})))

        sub = await bus.broker.connection.subscribe(DLQ_PREFIX + durable, cb=on_dead)
        await bus.publish(poison)
        for g in good:
            await bus.publish(g)
        await wait_for(lambda: len(handled) == 5 and dead)
        await sub.unsubscribe()
    assert sorted(handled) == sorted(g.version for g in good)
    assert attempts == ["6.6.6"] * 3
    body, headers = dead[0]
    assert ModelUploaded.model_validate_json(body).event_id == poison.event_id
    assert "cannot handle this one" in headers["Eaf-Dead-Letter-Reason"]
    assert headers["Eaf-Original-Subject"] == ModelUploaded.SUBJECT


async def test_malformed_event_is_dead_lettered_at_once(nats_server, unique_id) -> None:
    durable = unique_id("dur")
    calls: list[object] = []
    bus = Bus(config(nats_server.url), service="test")

    @bus.consumer(ModelUploaded, durable=durable)
    async def handle(ev: ModelUploaded) -> None:
        calls.append(ev)

    async with bus:
        dead: list[bytes] = []

        async def on_dead(msg) -> None:
            dead.append(msg.data)

        sub = await bus.broker.connection.subscribe(DLQ_PREFIX + durable, cb=on_dead)
        marker = unique_id("junk").encode()
        await bus.js.publish(ModelUploaded.SUBJECT, b'{"not": "an event", "m": "' + marker + b'"}')
        await wait_for(lambda: any(marker in d for d in dead))
        await sub.unsubscribe()
    assert not any(getattr(c, "model", None) == marker.decode() for c in calls)


class Ping(BaseModel):
    name: str


class Pong(BaseModel):
    greeting: str


async def test_request_reply_and_errors(nats_server, unique_id) -> None:
    rpc = Rpc.of(unique_id("svc"), "ping", Ping, Pong)
    server = Bus(config(nats_server.url), service="server")

    async def ping(req: Ping) -> Pong:
        if req.name == "nobody":
            raise NotFound("no such name: nobody")
        return Pong(greeting=f"hello {req.name}")

    server.serve(rpc, ping)
    async with server, Bus(config(nats_server.url), service="client") as client:
        assert (await client.call(rpc, Ping(name="x"))).greeting == "hello x"
        with pytest.raises(NotFound, match="no such name"):
            await client.call(rpc, Ping(name="nobody"))
        reply = await client.broker.request(b'{"name": 5}', subject=rpc.subject, timeout=5)
        assert b'"invalid"' in reply.body


async def test_handler_slower_than_ack_wait_gets_the_event_once(nats_server, unique_id) -> None:
    # A validation of a large model can outlast ack_wait: the consumer keeps telling the
    # server it is working, so the event is not delivered a second time meanwhile.
    durable = unique_id("slow")
    e = event(model=unique_id("m"))
    calls: list[uuid.UUID] = []
    bus = Bus(config(nats_server.url, ack_wait=1.0), service="slow")

    @bus.consumer(ModelUploaded, durable=durable)
    async def handle(ev: ModelUploaded) -> None:
        if ev.model == e.model:
            calls.append(ev.event_id)
            await asyncio.sleep(3.5)  # three and a half times ack_wait

    async with bus:
        await bus.publish(e)
        await wait_for(lambda: calls)
        await asyncio.sleep(5.0)  # past the handler's end and a redelivery's time
        info = await bus.js.consumer_info("EAF", durable)
    assert calls == [e.event_id]
    assert info.num_ack_pending == 0 and info.num_redelivered == 0

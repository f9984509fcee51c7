"""The bus middleware decides, per event, between ack, retry and dead letter, without a
nats-server: FastStream's ``TestNatsBroker`` hands each message straight to the router."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from unittest.mock import AsyncMock, patch

import pytest
from faststream.nats import JStream, NatsMessage, TestNatsBroker
from faststream.nats.testing import PatchedMessage

from schemas.config import NatsConfig
from schemas.events import ModelUploaded
from services.common.bus import Bus
from services.common.middleware import DLQ_PREFIX

DURABLE = "validator"


def uploaded() -> ModelUploaded:
    return ModelUploaded(
        event_id=uuid.uuid4(), model="m", version="1.0.0", artifact_id="ab" * 32,
        size_bytes=10, sequence=1,
    )  # fmt: skip


class Witness:
    """A bus whose one consumer fails as told, and what reached its dead-letter subject."""

    def __init__(self, config: NatsConfig, *, fail: bool) -> None:
        self.bus = Bus(config, service="test")
        self.handled: list[ModelUploaded] = []
        self.dead: list[NatsMessage] = []

        @self.bus.consumer(ModelUploaded, durable=DURABLE)
        async def on_uploaded(event: ModelUploaded) -> None:
            self.handled.append(event)
            if fail:
                raise RuntimeError("cannot handle this one")

        @self.bus.broker.subscriber(
            DLQ_PREFIX + DURABLE, stream=JStream(config.stream, declare=False)
        )
        async def dead(msg: NatsMessage) -> None:
            self.dead.append(msg)


@pytest.fixture
def nak() -> Iterator[AsyncMock]:
    with patch.object(PatchedMessage, "nak", autospec=True) as mock:
        yield mock


async def test_a_handled_event_is_acked_and_nothing_is_dead_lettered(nak: AsyncMock) -> None:
    w = Witness(NatsConfig(), fail=False)
    event = uploaded()
    async with TestNatsBroker(w.bus.broker):
        await w.bus.publish(event)
    assert w.handled == [event]
    assert w.dead == []
    nak.assert_not_called()


async def test_a_failed_event_is_retried_after_the_first_back_off_step(nak: AsyncMock) -> None:
    w = Witness(NatsConfig(max_deliver=3, retry_backoff=(2.5, 9.0)), fail=True)
    async with TestNatsBroker(w.bus.broker):
        await w.bus.publish(uploaded())
    assert len(w.handled) == 1
    assert w.dead == []
    assert nak.call_args.kwargs == {"delay": 2.5}


async def test_the_last_delivery_moves_the_event_to_the_dead_letter_subject(
    nak: AsyncMock,
) -> None:
    w = Witness(NatsConfig(max_deliver=1), fail=True)
    event = uploaded()
    async with TestNatsBroker(w.bus.broker):
        await w.bus.publish(event)
    [dead] = w.dead
    assert ModelUploaded.model_validate_json(dead.body) == event
    assert dead.headers["Eaf-Original-Subject"] == ModelUploaded.SUBJECT
    assert "cannot handle this one" in dead.headers["Eaf-Dead-Letter-Reason"]
    assert dead.headers["Nats-Msg-Id"] == f"dlq:{DURABLE}:{event.event_id}"
    nak.assert_not_called()


async def test_an_event_that_does_not_parse_is_dead_lettered_at_once(nak: AsyncMock) -> None:
    w = Witness(NatsConfig(max_deliver=5), fail=False)
    async with TestNatsBroker(w.bus.broker):
        await w.bus.broker.publish(
            b'{"not": "an upload"}', subject=ModelUploaded.SUBJECT, stream="EAF"
        )
    assert w.handled == []
    [dead] = w.dead
    assert dead.headers["Eaf-Dead-Letter-Reason"].startswith("malformed event:")
    nak.assert_not_called()

"""The tracker's router answers through the declared ``TrackerRpc`` subjects, and its
errors travel as the caller's ``ServiceError``, without a nats-server (``TestNatsBroker``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from faststream.nats import TestNatsBroker
from pydantic import BaseModel

from schemas.config import NatsConfig
from schemas.rpc import HealthRequest, health_rpc
from schemas.stats import EvaluateReply, EvaluateRequest, ModelStats, StatsRequest, TrackerRpc
from services.common.bus import Bus
from services.common.errors import BadRequest, NotFound, ServiceError
from services.tracker.handlers import create_router

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class NotAStatsRequest(BaseModel):
    model: str
    window_seconds: str


class FakeTracker:
    """The use cases the router calls: ``stats`` knows one model, ``evaluate`` breaks."""

    async def stats(self, request: StatsRequest) -> ModelStats:
        if request.model != "known":
            raise NotFound(f"no metrics for model {request.model!r}")
        return ModelStats(model="known", window_start=T0, window_end=T0)

    async def evaluate(self, request: EvaluateRequest) -> EvaluateReply:
        raise RuntimeError("influx went away")


def bus_with_tracker() -> Bus:
    bus = Bus(NatsConfig(), service="test-client")
    bus.include(create_router(FakeTracker(), NatsConfig()))  # type: ignore[arg-type]
    return bus


async def test_a_reply_comes_back_as_the_declared_type() -> None:
    bus = bus_with_tracker()
    async with TestNatsBroker(bus.broker):
        stats = await bus.call(TrackerRpc.STATS, StatsRequest(model="known"))
        health = await bus.call(health_rpc("tracker"), HealthRequest())
    assert stats.model == "known"
    assert (health.service, health.status) == ("tracker", "ok")


async def test_a_service_error_is_raised_again_on_the_callers_side() -> None:
    bus = bus_with_tracker()
    async with TestNatsBroker(bus.broker):
        with pytest.raises(NotFound, match="no metrics for model 'other'") as caught:
            await bus.call(TrackerRpc.STATS, StatsRequest(model="other"))
    assert caught.value.status == 404


async def test_a_request_that_does_not_parse_is_answered_invalid() -> None:
    bus = bus_with_tracker()
    async with TestNatsBroker(bus.broker):
        with pytest.raises(BadRequest, match="window_seconds"):
            await bus.request(
                TrackerRpc.STATS.subject,
                NotAStatsRequest(model="known", window_seconds="soon"),
                ModelStats,
            )


async def test_a_bug_is_answered_as_an_internal_error_without_its_details() -> None:
    bus = bus_with_tracker()
    async with TestNatsBroker(bus.broker):
        with pytest.raises(ServiceError) as caught:
            await bus.call(TrackerRpc.EVALUATE, EvaluateRequest(model="known"))
    assert (caught.value.code, caught.value.status) == ("internal", 500)
    assert "influx" not in str(caught.value)

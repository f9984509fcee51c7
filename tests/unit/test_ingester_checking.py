"""Checking runs of messages in worker processes gives what checking them in place gives."""

from __future__ import annotations

import os
import signal
import uuid
from datetime import UTC, datetime, timedelta

from schemas.telemetry import DeviceSample, MetricsBatch
from services.ingester.checking import Checker, check_messages
from services.ingester.domain import Accepted, Reason, Refused

T = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
PREFIX = "eaf/v1"


def message(i: int) -> tuple[str, bytes]:
    device = f"dev-{i % 3}"
    topic = f"{PREFIX}/devices/{device}/metrics"
    if i % 5 == 4:
        return topic, b"{not json"
    batch = MetricsBatch(
        batch_id=uuid.uuid4(),
        device_id=device,
        device=tuple(
            DeviceSample(ts=T + timedelta(seconds=i * 10 + k), cpu_percent=k, memory_bytes=i)
            for k in range(3)
        ),
    )
    return topic, batch.model_dump_json().encode()


def test_worker_processes_give_the_same_results_in_order_and_survive_a_dead_worker() -> None:
    messages = [message(i) for i in range(40)]
    expected = check_messages(PREFIX, messages)
    assert sum(isinstance(r, Refused) for r in expected) == 8
    assert all(r.reason is Reason.MALFORMED_JSON for r in expected if isinstance(r, Refused))
    checker = Checker(PREFIX, workers=2)
    checker.start()
    try:
        assert checker.check(messages) == expected
        assert checker.check(messages[:3]) == expected[:3]  # in place: too small a run
        # A worker killed under the checker: the run is still checked, new workers start.
        assert checker._pool is not None
        victim = next(iter(checker._pool._processes))
        os.kill(victim, signal.SIGKILL)
        assert checker.check(messages) == expected
        assert checker.check(messages) == expected
    finally:
        checker.close()


def test_one_worker_means_checking_in_place() -> None:
    checker = Checker(PREFIX, workers=1)
    checker.start()
    try:
        assert checker._pool is None
        result = checker.check([message(0)] * 10)
        assert all(isinstance(r, Accepted) for r in result)
    finally:
        checker.close()

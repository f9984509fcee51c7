"""The tracker's use cases: stats, regression checks, regression events.

Every ``evaluation_interval`` seconds each model with metrics is evaluated; a regression is
published once as ``eaf.model.performance.regressed``.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from schemas.config import Settings
from schemas.events import ModelPerformanceRegressed
from schemas.registry import MAX_PAGE_LIMIT, ListVersionsRequest, RegistryRpc
from schemas.stats import (
    EvaluateReply,
    EvaluateRequest,
    MetricComparison,
    ModelStats,
    StatsRequest,
    VersionComparison,
)
from services.common.bus import Bus, BusError
from services.common.errors import NotFound
from services.common.logging import get_logger
from services.tracker.domain import compare_versions, model_stats, order_versions
from services.tracker.store import InfluxReader, RegressionStore

__all__ = ["Tracker"]

log = get_logger(__name__)
_EVENT_NAMESPACE = uuid.UUID("6f1d3c1e-5a7b-4f0e-9d51-2f3b8e0c7a11")


class Tracker:
    """Reads InfluxDB, answers stats, publishes regressions."""

    def __init__(
        self, settings: Settings, *, bus: Bus, influx: InfluxReader, regressions: RegressionStore
    ) -> None:
        self.settings = settings
        self.config = settings.performance_tracking
        self.bus = bus
        self.influx = influx
        self.regressions = regressions

    async def stats(self, request: StatsRequest) -> ModelStats:
        """A model's performance per version and device over a window."""
        end = request.end or datetime.now(UTC)
        start = end - timedelta(seconds=request.window_seconds)
        rows = await self.influx.sums(request.model, start, end, request.version)
        try:
            # A quarter of the request timeout: the stats still answer their caller in time.
            sequence = await self.upload_order(
                request.model, timeout=self.settings.nats.request_timeout / 4
            )
        except BusError as exc:
            # Figures do not depend on the order; only the listing's order falls back.
            log.warning("registry did not answer; versions listed by name", error=str(exc))
            sequence = {}
        ordered = order_versions({r.version for r in rows}, sequence)
        return model_stats(request.model, start, end, rows, ordered)

    async def upload_order(self, model: str, *, timeout: float | None = None) -> dict[str, int]:
        """Each version's ``sequence`` as the registry gives it ({} for an unknown model).

        Raises ``BusError`` when the registry does not answer: a comparison against the
        wrong baseline would announce a regression that is none.
        """
        order: dict[str, int] = {}
        while True:
            request = ListVersionsRequest(model=model, offset=len(order), limit=MAX_PAGE_LIMIT)
            try:
                page = await self.bus.call(RegistryRpc.LIST_VERSIONS, request, timeout=timeout)
            except NotFound:
                return order
            order.update((v.version, v.sequence) for v in page.items)
            if not page.items or len(order) >= page.total:
                return order

    async def evaluate(self, request: EvaluateRequest) -> EvaluateReply:
        """Compare each version with the one before it now; publish regressions."""
        end = request.end or datetime.now(UTC)
        window = request.window_seconds or self.config.evaluation_window
        start = end - timedelta(seconds=window)
        intervals = await self.influx.intervals(request.model, start, end)
        first_seen = await self.influx.first_seen(request.model, start, end)
        ordered = order_versions(first_seen, await self.upload_order(request.model), first_seen)
        # Ranks over every point of the window: numpy work, off the event loop.
        comparisons = await asyncio.to_thread(
            compare_versions,
            request.model,
            ordered,
            intervals,
            p95_threshold=self.config.p95_regression_threshold,
            error_rate_threshold=self.config.error_rate_regression_threshold,
            min_inferences=self.config.min_inferences,
            significance_level=self.config.significance_level,
        )
        for c in comparisons:
            for m in c.metrics:
                if m.verdict == "regressed":
                    await self._announce(c, m)
        return EvaluateReply(comparisons=tuple(comparisons))

    async def _announce(self, c: VersionComparison, m: MetricComparison) -> None:
        if await self.regressions.seen(c.model, c.version, c.baseline_version, m.metric):
            return
        event = ModelPerformanceRegressed(
            # The same regression always has the same id: the stream stores it once even
            # if two instances announce it at the same moment.
            event_id=uuid.uuid5(
                _EVENT_NAMESPACE, f"{c.model}\0{c.version}\0{c.baseline_version}\0{m.metric}"
            ),
            model=c.model,
            version=c.version,
            baseline_version=c.baseline_version,
            metric=m.metric,
            baseline_value=m.baseline_value,
            value=m.value,
            threshold=m.threshold,
            devices=c.devices,
            change=m.change,
            change_low=m.change_low,
            change_high=m.change_high,
            significance_level=c.significance_level,
            count=c.count,
            baseline_count=c.baseline_count,
            intervals=c.intervals,
            baseline_intervals=c.baseline_intervals,
        )
        await self.bus.publish(event)
        await self.regressions.mark(c.model, c.version, c.baseline_version, m.metric)
        log.warning(
            "performance regression",
            model=c.model,
            version=c.version,
            baseline=c.baseline_version,
            metric=m.metric,
            value=m.value,
            baseline_value=m.baseline_value,
            change=m.change,
            change_low=m.change_low,
            change_high=m.change_high,
        )

    async def evaluate_all(self) -> None:
        """One round of checks over every model with metrics."""
        for model in await self.influx.models():
            try:
                await self.evaluate(EvaluateRequest(model=model))
            except Exception:
                log.exception("evaluation failed", model=model)

    async def evaluate_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.evaluation_interval)
            try:
                await self.evaluate_all()
            except Exception:
                log.exception("evaluation round failed")

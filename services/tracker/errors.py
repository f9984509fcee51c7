"""Errors of the tracker; they travel over RPC as ``ServiceError``s."""

from __future__ import annotations

from services.common.errors import ServiceUnavailable

__all__ = ["InfluxTruncated", "InfluxUnavailable"]


class InfluxUnavailable(ServiceUnavailable):
    """InfluxDB did not answer the tracker's query."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"metrics store (InfluxDB) unavailable: {reason}; check influxdb.url and that "
            "InfluxDB is running, then try again"
        )


class InfluxTruncated(ServiceUnavailable):
    """InfluxDB cut an answer short: a verdict on part of the points would be wrong."""

    def __init__(self) -> None:
        super().__init__(
            "metrics store (InfluxDB) truncated the tracker's query (its [http] max-row-limit); "
            "set max-row-limit = 0 or shorten performance_tracking.evaluation_window"
        )

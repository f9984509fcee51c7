"""Errors of the tracker; they travel over RPC as ``ServiceError``s."""

from __future__ import annotations

from services.common.errors import ServiceUnavailable

__all__ = ["InfluxUnavailable"]


class InfluxUnavailable(ServiceUnavailable):
    """InfluxDB did not answer the tracker's query."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"metrics store (InfluxDB) unavailable: {reason}; check influxdb.url and that "
            "InfluxDB is running, then try again"
        )

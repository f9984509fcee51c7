"""The ingester's own figures for Prometheus (one registry per ingester instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["Figures"]


class Figures:
    """Counters and gauges, exported on ``ingester.metrics_port`` under ``eaf_ingester_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "eaf_ingester_messages_received", "MQTT metrics messages received", registry=r
        )
        self.accepted = Counter(
            "eaf_ingester_messages_accepted", "messages whose points were spooled", registry=r
        )
        self.rejected = Counter(
            "eaf_ingester_messages_rejected",
            "messages set aside, by reason",
            ["reason"],
            registry=r,
        )
        self.readmitted = Counter(
            "eaf_ingester_messages_readmitted",
            "messages of then-unknown devices accepted once the device enrolled",
            registry=r,
        )
        self.spooled = Counter(
            "eaf_ingester_points_spooled", "points committed to the spool", registry=r
        )
        self.written = Counter(
            "eaf_ingester_points_written", "points InfluxDB accepted", registry=r
        )
        self.influx_rejected = Counter(
            "eaf_ingester_points_influx_rejected",
            "points InfluxDB refused (4xx), set aside",
            registry=r,
        )
        self.write_retries = Counter(
            "eaf_ingester_write_retries",
            "InfluxDB writes retried (429, 5xx, lost connection)",
            registry=r,
        )
        self.dropped = Counter(
            "eaf_ingester_points_dropped",
            "oldest points dropped because the spool was full",
            registry=r,
        )
        self.spool_points = Gauge(
            "eaf_ingester_spool_points", "points waiting in the spool", registry=r
        )
        self.lag = Gauge(
            "eaf_ingester_lag_seconds",
            "age of the oldest point waiting in the spool",
            registry=r,
        )
        self.known_devices = Gauge(
            "eaf_ingester_known_devices", "enrolled devices the ingester accepts", registry=r
        )

    def rejected_count(self, reason: str) -> int:
        """Current value of the rejected counter for ``reason`` (for tests and logs)."""
        value = self.registry.get_sample_value(
            "eaf_ingester_messages_rejected_total", {"reason": reason}
        )
        return int(value or 0)

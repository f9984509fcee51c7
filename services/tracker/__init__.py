"""The performance tracker: model performance from InfluxDB, regressions as events."""

from services.tracker.app import Tracker, create_service

__all__ = ["Tracker", "create_service"]

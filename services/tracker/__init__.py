"""The performance tracker: model performance from InfluxDB, regressions as events."""

from services.tracker.app import create_service
from services.tracker.service import Tracker

__all__ = ["Tracker", "create_service"]

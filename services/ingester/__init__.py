"""The metrics ingester: devices' MQTT metrics, validated, spooled on disk, into InfluxDB."""

from services.ingester.app import create_service
from services.ingester.service import Ingester

__all__ = ["Ingester", "create_service"]

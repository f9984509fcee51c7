"""The metrics ingester: devices' MQTT metrics, validated, spooled on disk, into InfluxDB."""

from services.ingester.app import Ingester, create_service

__all__ = ["Ingester", "create_service"]

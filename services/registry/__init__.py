"""The model registry: models, versions, metadata, reports and aliases in SQL; retention.

Serves ``eaf.rpc.registry.*`` and consumes the validator's and analyzer's events.
"""

from services.registry.app import create_service

__all__ = ["create_service"]

"""``python -m services.ingester --config FILE``."""

from services.common.runner import run_service
from services.ingester.app import create_service

if __name__ == "__main__":
    run_service("ingester", create_service)

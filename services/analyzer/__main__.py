"""``python -m services.analyzer --config FILE``."""

from services.analyzer.app import create_service
from services.common.runner import run_service

if __name__ == "__main__":
    run_service("analyzer", create_service)

"""``python -m services.tracker --config FILE``."""

from services.common.runner import run_service
from services.tracker.app import create_service

if __name__ == "__main__":
    run_service("tracker", create_service)

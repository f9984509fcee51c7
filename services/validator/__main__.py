"""``python -m services.validator --config FILE``."""

from services.common.runner import run_service
from services.validator.app import create_service

if __name__ == "__main__":
    run_service("validator", create_service)

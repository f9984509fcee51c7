"""``python -m services.deployer --config FILE``."""

from services.common.runner import run_service
from services.deployer.app import create_service

run_service("deployer", create_service)

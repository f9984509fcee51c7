"""``python -m services.deployer --config FILE``."""

from services.common.runner import run_service
from services.deployer.app import create_app

run_service("deployer", create_app)

"""Alembic's entry for the deployer tables (see services/common/migrate.py)."""

from services.common.migrate import run_env
from services.deployer.store import Base

run_env(Base.metadata)

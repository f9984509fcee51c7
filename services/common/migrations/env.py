"""Alembic's entry for the common tables (see services/common/migrate.py)."""

from services.common.db import CommonBase
from services.common.migrate import run_env

run_env(CommonBase.metadata)

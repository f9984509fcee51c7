"""Alembic's entry for the tracker tables (see services/common/migrate.py)."""

from services.common.migrate import run_env
from services.tracker.store import TrackerBase

run_env(TrackerBase.metadata)

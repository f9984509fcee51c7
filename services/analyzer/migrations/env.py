"""Alembic's entry for the analyzer tables (see services/common/migrate.py)."""

from services.analyzer.store import AnalyzerBase
from services.common.migrate import run_env

run_env(AnalyzerBase.metadata)

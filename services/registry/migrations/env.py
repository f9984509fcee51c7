"""Alembic's entry for the registry tables (see services/common/migrate.py)."""

from services.common.migrate import run_env
from services.registry.tables import RegistryBase

run_env(RegistryBase.metadata)

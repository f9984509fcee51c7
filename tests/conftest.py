"""The fixtures of every test come from ``tests.support.fixtures``."""

pytest_plugins = ["tests.support.fixtures"]

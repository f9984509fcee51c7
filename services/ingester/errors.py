"""Errors of the ingester."""

from __future__ import annotations

__all__ = ["IngesterError", "SpoolError"]


class IngesterError(Exception):
    """Root of the ingester's errors."""


class SpoolError(IngesterError):
    """The on-disk spool cannot be opened or written."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"metrics spool {path} cannot be used: {reason}; check that the directory of "
            "ingester.spool_path exists, is writable and has free space"
        )

"""Errors of the analyzer service."""

from __future__ import annotations

from services.validator.errors import ValidatorError

__all__ = ["AnalysisFailedError", "AnalyzerError"]


class AnalyzerError(ValidatorError):
    """Root of the analyzer's errors."""


class AnalysisFailedError(AnalyzerError):
    """The sandboxed analysis gave no report; the event is retried, then dead-lettered."""

    def __init__(self, artifact_id: str, reason: str) -> None:
        self.artifact_id = artifact_id
        super().__init__(f"analysis of artifact {artifact_id} failed: {reason}")

"""Errors of the analyzer service (the sandbox's own are ``modelkit.errors``)."""

from __future__ import annotations

__all__ = ["AnalysisFailedError", "AnalyzerError", "ArtifactUnavailableError"]


class AnalyzerError(Exception):
    """Root of the analyzer's errors."""


class ArtifactUnavailableError(AnalyzerError):
    """An artifact named by an event cannot be read (yet); the event will be retried."""

    def __init__(self, artifact_id: str, reason: str) -> None:
        self.artifact_id = artifact_id
        super().__init__(f"artifact {artifact_id} cannot be read: {reason}")


class AnalysisFailedError(AnalyzerError):
    """The sandboxed analysis gave no report; the event is retried, then dead-lettered."""

    def __init__(self, artifact_id: str, reason: str) -> None:
        self.artifact_id = artifact_id
        super().__init__(f"analysis of artifact {artifact_id} failed: {reason}")

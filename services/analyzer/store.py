"""The analyzer's own table: the last analysis of every version, to diff the next one.

Keyed by (model, version), with the registry's upload ``sequence`` of the version (null
for analyses made before validated events carried it). Which analysis a new version is
diffed against is the domain's rule (``services.analyzer.domain.previous_analysis``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.reports import AnalysisReport

__all__ = [
    "AnalysisEntry",
    "AnalyzerBase",
    "StoredAnalysis",
    "analyses_of",
    "analysis_report",
    "save_analysis",
]


class AnalyzerBase(DeclarativeBase):
    pass


class StoredAnalysis(AnalyzerBase):
    """One analysed version."""

    __tablename__ = "analyzer_reports"
    __table_args__ = (UniqueConstraint("model", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(128))
    #: ``ModelUploaded.sequence`` of the version; null in rows older than the column.
    sequence: Mapped[int | None] = mapped_column(Integer, nullable=True)
    artifact_id: Mapped[str] = mapped_column(String(64))
    report: Mapped[str] = mapped_column(Text)
    analyzed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )


@dataclass(frozen=True, slots=True)
class AnalysisEntry:
    """A stored analysis without its report: enough to choose the previous version."""

    id: int
    version: str
    sequence: int | None


async def analyses_of(session: AsyncSession, *, model: str) -> list[AnalysisEntry]:
    """Every analysed version of ``model``, in the order the rows were made."""
    rows = await session.execute(
        select(StoredAnalysis.id, StoredAnalysis.version, StoredAnalysis.sequence)
        .where(StoredAnalysis.model == model)
        .order_by(StoredAnalysis.id)
    )
    return [AnalysisEntry(id=id_, version=version, sequence=seq) for id_, version, seq in rows]


async def analysis_report(session: AsyncSession, entry: AnalysisEntry) -> AnalysisReport | None:
    """The report stored for ``entry`` (``None`` if its row is gone)."""
    stored = await session.scalar(
        select(StoredAnalysis.report).where(StoredAnalysis.id == entry.id)
    )
    return None if stored is None else AnalysisReport.model_validate_json(stored)


async def save_analysis(
    session: AsyncSession,
    *,
    model: str,
    version: str,
    sequence: int | None,
    artifact_id: str,
    report: AnalysisReport,
) -> None:
    """Record (or replace) the analysis of ``model`` ``version`` in the caller's transaction."""
    existing = await session.scalar(
        select(StoredAnalysis).where(
            StoredAnalysis.model == model, StoredAnalysis.version == version
        )
    )
    if existing is None:
        session.add(
            StoredAnalysis(
                model=model,
                version=version,
                sequence=sequence,
                artifact_id=artifact_id,
                report=report.model_dump_json(),
            )
        )
    else:
        # A version deleted and uploaded again has a new, higher sequence.
        existing.sequence = sequence
        existing.artifact_id = artifact_id
        existing.report = report.model_dump_json()
        existing.analyzed_at = datetime.now(UTC)

"""The analyzer's own table: the last analysis of every version, to diff the next one.

Keyed by (model, version). The previous version of a model is the highest semantic
version below the new one that has an analysis; versions that are not semantic versions
fall back to the order in which they were analysed.
"""

from __future__ import annotations

from datetime import UTC, datetime

import semver
from sqlalchemy import DateTime, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.reports import AnalysisReport

__all__ = ["AnalyzerBase", "StoredAnalysis", "previous_analysis", "save_analysis"]


class AnalyzerBase(DeclarativeBase):
    pass


class StoredAnalysis(AnalyzerBase):
    """One analysed version."""

    __tablename__ = "analyzer_reports"
    __table_args__ = (UniqueConstraint("model", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(128))
    artifact_id: Mapped[str] = mapped_column(String(64))
    report: Mapped[str] = mapped_column(Text)
    analyzed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )


def _semver(value: str) -> semver.Version | None:
    try:
        return semver.Version.parse(value)
    except (ValueError, TypeError):
        return None


async def previous_analysis(
    session: AsyncSession, *, model: str, version: str
) -> tuple[str, AnalysisReport] | None:
    """The analysis of the version just before ``version`` of ``model``, if any."""
    rows = (
        await session.execute(
            select(StoredAnalysis.id, StoredAnalysis.version, StoredAnalysis.report).where(
                StoredAnalysis.model == model, StoredAnalysis.version != version
            )
        )
    ).all()
    if not rows:
        return None
    current = _semver(version)
    if current is not None:
        older = [(p, v, r) for _, v, r in rows if (p := _semver(v)) is not None and p < current]
        if not older:
            return None
        _, found, report = max(older, key=lambda item: item[0])
    else:
        _, found, report = max(rows, key=lambda row: row[0])
    return found, AnalysisReport.model_validate_json(report)


async def save_analysis(
    session: AsyncSession, *, model: str, version: str, artifact_id: str, report: AnalysisReport
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
                artifact_id=artifact_id,
                report=report.model_dump_json(),
            )
        )
    else:
        existing.artifact_id = artifact_id
        existing.report = report.model_dump_json()
        existing.analyzed_at = datetime.now(UTC)

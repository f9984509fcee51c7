"""The analyzer service: consumes ``eaf.model.validated``, profiles the model in a
sandboxed worker, measures its latency in another (once the profile is done), diffs it
against the previous version and publishes ``eaf.model.analyzed``.

It keeps its own table of past analyses (``analyzer_reports``) for the diff; the
incoming event id is recorded in the same transaction, and the outgoing event id is
derived from the incoming one, so handling an event twice publishes one report.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.config import Settings
from schemas.events import ModelAnalyzed, ModelValidated
from schemas.reports import AnalysisReport, LatencyStats
from services.analyzer.domain import diff_reports
from services.analyzer.errors import AnalysisFailedError
from services.analyzer.store import previous_analysis, save_analysis
from services.common.artifacts import ArtifactCorruptError, ArtifactNotFoundError
from services.common.bus import Bus
from services.common.db import claim_event, create_engine, is_processed
from services.common.logging import get_logger
from services.common.migrate import upgrade
from services.validator.app import derived_event_id, ensure_sandbox
from services.validator.artifacts import ArtifactSource, open_artifacts
from services.validator.errors import ArtifactUnavailableError
from services.validator.pipeline import ZIP_MAGIC, readable, write_stream
from services.validator.sandbox import (
    StartedAhead,
    Worker,
    Workers,
    hand_over,
    run_task,
    start_workers,
)

__all__ = ["CONSUMER", "AnalyzerService", "create_service"]

log = get_logger(__name__)

CONSUMER = "analyzer"


class AnalysisWorkers(Workers):
    """The analyzer's two sandboxed workers for one model."""

    @property
    def timer(self) -> Worker:
        return self.each[0]

    @property
    def profiler(self) -> Worker:
        return self.each[1]


class AnalyzerService:
    """The running analyzer: its bus, database and artifact source."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus: Bus,
        sessions: async_sessionmaker[AsyncSession],
        artifacts: ArtifactSource,
        consumer: str = CONSUMER,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.config = settings.analyzer
        self.bus = bus
        self.sessions = sessions
        self.artifacts = artifacts
        #: The profile and latency workers, one pair started ahead of each model
        #: (``analyzer.prestart_workers``); ``workers.start()`` starts the first.
        self.workers: StartedAhead[AnalysisWorkers] = StartedAhead(
            self._start_workers, enabled=self.config.prestart_workers
        )

    async def _start_workers(self, stack: AsyncExitStack) -> AnalysisWorkers:
        # The timer first: its session, then the measurement, are the longer way.
        vcfg = self.settings.validator
        return await start_workers(
            stack,
            [("services.analyzer.timing:time_model", 2), ("services.analyzer.tasks:profile", 1)],
            kind=AnalysisWorkers,
            work_dir=vcfg.work_dir,
            limits=self.config.sandbox,
            require_isolation=vcfg.require_network_isolation,
        )

    async def handle_validated(self, event: ModelValidated) -> None:
        """Analyse one validated version and publish the report, once per event."""
        async with self.sessions() as session:
            if await is_processed(session, consumer=self.consumer, event_id=event.event_id):
                log.info("version already analysed", event_id=str(event.event_id))
                return
            previous = await previous_analysis(session, model=event.model, version=event.version)
        report = await self.analyze(event.artifact_id)
        if previous is not None:
            version, before = previous
            report = report.model_copy(update={"diff": diff_reports(version, before, report)})
        await self.bus.publish(
            ModelAnalyzed(
                event_id=derived_event_id(CONSUMER, event.event_id),
                model=event.model,
                version=event.version,
                artifact_id=event.artifact_id,
                report=report,
            )
        )
        async with self.sessions.begin() as session:
            await save_analysis(
                session,
                model=event.model,
                version=event.version,
                artifact_id=event.artifact_id,
                report=report,
            )
            await claim_event(session, consumer=self.consumer, event_id=event.event_id)
        log.info(
            "version analysed",
            model=event.model,
            version=event.version,
            macs=report.macs,
            p50_ms=report.latency.p50_ms if report.latency else None,
        )

    async def analyze(self, artifact_id: str) -> AnalysisReport:
        """Profile and time the artifact in sandboxed workers."""
        vcfg, acfg = self.settings.validator, self.config
        dims = {"dim_default": vcfg.dynamic_dim_default, "dims": dict(vcfg.dynamic_dims)}
        limits = acfg.sandbox
        try:
            # Opened before workers are taken: a missing artifact costs no worker start.
            chunks = await readable(self.artifacts.iter_plaintext(artifact_id))
        except (ArtifactNotFoundError, ArtifactCorruptError) as exc:
            raise ArtifactUnavailableError(artifact_id, str(exc)) from exc
        # Started ahead (or now, if none are ready): confined, libraries imported; they
        # read nothing before ``begin``.
        async with self.workers.take() as workers:
            workdir, timer, profiler = workers.workdir, workers.timer, workers.profiler
            upload = workdir / "upload"
            try:
                await write_stream(chunks, upload, limit=vcfg.max_file_size)
            except (ArtifactNotFoundError, ArtifactCorruptError) as exc:
                raise ArtifactUnavailableError(artifact_id, str(exc)) from exc
            model, package = await self._model_file(upload, workdir)
            # The timer creates its session beside the profile; it measures only when
            # asked, below, once the profile worker is gone.
            await timer.begin(
                {
                    "model": str(model),
                    "threads": acfg.threads,
                    "warmup_runs": acfg.warmup_runs,
                    "runs": acfg.runs,
                    "package": package,
                    **dims,
                }
            )
            await profiler.begin(
                {"model": str(model), "max_nodes": acfg.max_nodes_in_report, **dims}
            )
            outcome = await profiler.next()
            await profiler.close()  # gone before the measurement starts
            if not outcome.ok:
                raise AnalysisFailedError(artifact_id, outcome.describe(limits, "analyzer"))
            report = AnalysisReport.model_validate(outcome.value)
            timing = await timer.next()
            if timing.ok:
                timing = await timer.next()
        if timing.ok:
            return report.model_copy(update={"latency": LatencyStats.model_validate(timing.value)})
        # A model that passed validation but cannot be timed still has its profile.
        warning = f"latency not measured: the model {timing.describe(acfg.sandbox, 'analyzer')}"
        return report.model_copy(update={"warnings": (*report.warnings, warning)})

    async def _model_file(self, upload: Path, workdir: Path) -> tuple[Path, bool]:
        """The model file to analyse, and whether the upload was a package (ZIP)."""
        with open(upload, "rb") as f:  # noqa: ASYNC230 - four bytes
            magic = f.read(4)
        model_dir = workdir / "model"
        model_dir.mkdir()
        hand_over(model_dir)
        if magic != ZIP_MAGIC:
            target = model_dir / "model.onnx"
            upload.rename(target)  # noqa: ASYNC240 - a rename within one directory
            return target, False
        outcome = await run_task(
            "services.validator.tasks:unpack_archive",
            {
                "archive": str(upload),
                "target": str(model_dir),
                "max_bytes": self.settings.validator.max_file_size,
            },
            limits=self.config.sandbox,
            workdir=workdir,
            require_isolation=self.settings.validator.require_network_isolation,
        )
        if not outcome.ok or not outcome.value.get("passed"):
            raise AnalysisFailedError(str(upload), "the archive cannot be unpacked")
        return model_dir / str(outcome.value["model"]), True


@asynccontextmanager
async def create_service(
    settings: Settings, *, artifacts: ArtifactSource | None = None, durable: str = CONSUMER
) -> AsyncIterator[AnalyzerService]:
    """Start the analyzer (bus, health subject, database, consumer); stop it on exit."""
    from services.analyzer.handlers import register

    await ensure_sandbox(settings.validator)
    bus = Bus(settings.nats, service="analyzer")
    bus.serve_health()
    engine = create_engine(settings.database)
    try:
        await upgrade(engine, "services.common", "services.analyzer")
        service = AnalyzerService(
            settings,
            bus=bus,
            sessions=async_sessionmaker(engine, expire_on_commit=False),
            artifacts=artifacts if artifacts is not None else open_artifacts(settings),
            consumer=durable,
        )
        register(bus, service, durable=durable)
        # Workers for the first model start now; the bus stops before they are killed.
        async with service.workers, bus:
            yield service
    finally:
        await engine.dispose()

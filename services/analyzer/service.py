"""The analyzer's use cases: for each ``eaf.model.validated``, profile the model in a
sandboxed worker, measures its latency in another (once the profile is done), diffs it
against the version uploaded before it and publishes ``eaf.model.analyzed``.

It keeps its own table of past analyses (``analyzer_reports``) for the diff; the
incoming event id is recorded in the same transaction, and the outgoing event id is
derived from the incoming one, so handling an event twice publishes one report.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.ahead import StartedAhead
from modelkit.files import ZIP_MAGIC, hand_over, readable, write_stream
from modelkit.outcome import TaskOutcome
from modelkit.probe import SANDBOX_FIX, SELFTEST_MODEL
from modelkit.sandbox import Worker, Workers, run_task, start_workers
from schemas.config import Settings
from schemas.events import ModelAnalyzed, ModelValidated
from schemas.reports import AnalysisReport, LatencyStats
from services.analyzer.domain import diff_reports, latency_warning, previous_analysis
from services.analyzer.errors import AnalysisFailedError, ArtifactUnavailableError
from services.analyzer.store import analyses_of, analysis_report, save_analysis
from services.common.artifacts import ArtifactCorruptError, ArtifactNotFoundError, ArtifactSource
from services.common.bus import Bus, derived_event_id
from services.common.db import claim_event, is_processed
from services.common.logging import get_logger

__all__ = ["CONSUMER", "Analyzer"]

log = get_logger(__name__)

CONSUMER = "analyzer"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


class AnalysisWorkers(Workers):
    """The analyzer's two sandboxed workers for one model."""

    @property
    def timer(self) -> Worker:
        return self.each[0]

    @property
    def profiler(self) -> Worker:
        return self.each[1]


class Analyzer:
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
        #: What the start-up self-test found broken ("" when profiling and latency work):
        #: the service's health says it.
        self.problem = ""
        self._platform_fault_logged = False

    async def _start_workers(self, stack: AsyncExitStack) -> AnalysisWorkers:
        # The timer first: its session, then the measurement, are the longer way.
        cfg = self.config
        return await start_workers(
            stack,
            [("services.analyzer.timing:time_model", 2), ("services.analyzer.tasks:profile", 1)],
            kind=AnalysisWorkers,
            work_dir=cfg.work_dir,
            limits=cfg.sandbox,
            require_isolation=cfg.require_network_isolation,
        )

    async def handle_validated(self, event: ModelValidated) -> None:
        """Analyse one validated version and publish the report, once per event."""
        async with self.sessions() as session:
            if await is_processed(session, consumer=self.consumer, event_id=event.event_id):
                log.info("version already analysed", event_id=str(event.event_id))
                return
            past = await analyses_of(session, model=event.model)
            chosen = previous_analysis(past, version=event.version, sequence=event.sequence)
            before = None if chosen is None else await analysis_report(session, chosen)
        report = await self.analyze(event.artifact_id)
        if chosen is not None and before is not None:
            diff = diff_reports(chosen.version, before, report)
            report = report.model_copy(update={"diff": diff})
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
                sequence=event.sequence,
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
        acfg = self.config
        try:
            # Opened before workers are taken: a missing artifact costs no worker start.
            chunks = await readable(self.artifacts.iter_plaintext(artifact_id))
        except (ArtifactNotFoundError, ArtifactCorruptError) as exc:
            raise ArtifactUnavailableError(artifact_id, str(exc)) from exc
        # Started ahead (or now, if none are ready): confined, libraries imported; they
        # read nothing before ``begin``.
        async with self.workers.take() as workers:
            workdir = workers.workdir
            upload = workdir / "upload"
            try:
                await write_stream(chunks, upload, limit=acfg.max_file_size)
            except (ArtifactNotFoundError, ArtifactCorruptError) as exc:
                raise ArtifactUnavailableError(artifact_id, str(exc)) from exc
            model, package = await self._model_file(upload, workdir)
            report, timing = await self._profile_and_time(workers, model, package, artifact_id)
        if timing.ok:
            return report.model_copy(update={"latency": LatencyStats.model_validate(timing.value)})
        # A model that passed validation but cannot be timed still has its profile.
        reason = timing.describe(acfg.sandbox, "analyzer")
        if timing.platform_fault:
            # The platform's fault, not the model's: an error with the fix the first time,
            # a warning for each model after it.
            if self._platform_fault_logged:
                log.warning("latency not measured: the sandbox failed", reason=reason)
            else:
                log.error(
                    "latency not measured: the sandbox failed", reason=reason, fix=SANDBOX_FIX
                )
            self._platform_fault_logged = True
        warning = latency_warning(reason, platform_fault=timing.platform_fault)
        return report.model_copy(update={"warnings": (*report.warnings, warning)})

    async def _profile_and_time(
        self, workers: AnalysisWorkers, model: Path, package: bool, artifact_id: str
    ) -> tuple[AnalysisReport, TaskOutcome]:
        """Profile ``model`` (a file in ``workers.workdir``) and time it: the report (its
        latency still empty) and what the timer answered."""
        acfg = self.config
        dims = {"dim_default": acfg.dynamic_dim_default, "dims": dict(acfg.dynamic_dims)}
        timer, profiler = workers.timer, workers.profiler
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
        await profiler.begin({"model": str(model), "max_nodes": acfg.max_nodes_in_report, **dims})
        outcome = await profiler.next()
        await profiler.close()  # gone before the measurement starts
        if not outcome.ok:
            raise AnalysisFailedError(artifact_id, outcome.describe(acfg.sandbox, "analyzer"))
        report = AnalysisReport.model_validate(outcome.value)
        timing = await timer.next()
        if timing.ok:
            timing = await timer.next()
        return report, timing

    async def check(self) -> str:
        """Profile and time the built-in model through the same workers and code as a
        validated model; ``""`` when latency was measured, else what is broken."""
        async with AsyncExitStack() as stack:
            workers = await self._start_workers(stack)
            model_dir = workers.workdir / "model"
            model_dir.mkdir()
            hand_over(model_dir)
            model = model_dir / "model.onnx"
            await write_stream(_chunks(SELFTEST_MODEL), model, limit=len(SELFTEST_MODEL))
            try:
                _, timing = await self._profile_and_time(workers, model, False, "self-test")
            except AnalysisFailedError as exc:
                return f"analysis is broken: {exc}"
        if not timing.ok:
            reason = timing.describe(self.config.sandbox, "analyzer")
            return f"latency measurement is broken: {reason}"
        return ""

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
            "modelkit.tasks:unpack_archive",
            {
                "archive": str(upload),
                "target": str(model_dir),
                "max_bytes": self.config.max_file_size,
                "setting": "analyzer.max_file_size",
            },
            limits=self.config.sandbox,
            workdir=workdir,
            require_isolation=self.config.require_network_isolation,
        )
        if not outcome.ok or not outcome.value.get("passed"):
            raise AnalysisFailedError(str(upload), "the archive cannot be unpacked")
        return model_dir / str(outcome.value["model"]), True

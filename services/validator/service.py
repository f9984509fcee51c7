"""The validator's use cases: validate an upload (``eaf.model.uploaded``) with every check
in a sandboxed worker and publish ``eaf.model.validated`` or ``eaf.model.rejected``.

Idempotency: the outgoing event's id is derived from the incoming one, so a re-publish
after a crash is dropped by the stream's duplicate window, and the incoming event id is
recorded (``processed_events``) once the report is published, so a redelivery later
publishes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelkit.ahead import StartedAhead
from modelkit.files import readable, write_stream
from modelkit.probe import SELFTEST_MODEL
from schemas.config import Settings, ValidatorConfig
from schemas.events import ModelRejected, ModelUploaded, ModelValidated
from schemas.reports import CheckOutcome, CheckResult, ValidationReport
from services.common.artifacts import ArtifactCorruptError, ArtifactNotFoundError, ArtifactSource
from services.common.bus import Bus, derived_event_id
from services.common.db import claim_event, is_processed
from services.common.logging import get_logger
from services.validator.errors import ArtifactUnavailableError
from services.validator.pipeline import (
    CheckWorkers,
    rejected_at,
    start_check_workers,
    validate_upload,
)

__all__ = [
    "CONSUMER",
    "Validator",
    "check_validation",
]

log = get_logger(__name__)

CONSUMER = "validator"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def check_validation(config: ValidatorConfig) -> str:
    """Validate the built-in model (``SELFTEST_MODEL``) as an upload, through the same
    workers and checks; ``""`` when it passes, else what failed. The policy is the default
    one (the model fits it), so a failure is the platform's, not the policy's."""
    probe = ValidatorConfig(
        work_dir=config.work_dir,
        sandbox=config.sandbox,
        require_network_isolation=config.require_network_isolation,
    )
    async with AsyncExitStack() as stack:
        workers = await start_check_workers(probe, stack)
        upload = workers.workdir / "upload"
        size = await write_stream(_chunks(SELFTEST_MODEL), upload, limit=probe.max_file_size)
        report = await validate_upload(
            upload, size=size, reference=None, config=probe, workers=workers
        )
    failure = report.first_failure
    return "" if failure is None else f"check {failure.name!r} failed: {failure.message}"


class Validator:
    """The running validator: its bus, database and artifact source."""

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
        self.config = settings.validator
        self.bus = bus
        self.sessions = sessions
        self.artifacts = artifacts
        #: The checks' workers, one set started ahead of each upload
        #: (``validator.prestart_workers``); ``workers.start()`` starts the first.
        self.workers: StartedAhead[CheckWorkers] = StartedAhead(
            partial(start_check_workers, self.config), enabled=self.config.prestart_workers
        )
        #: What the start-up self-test found broken ("" when validation works): the
        #: service's health says it, and no upload is taken while it is set.
        self.problem = ""

    async def handle_uploaded(self, event: ModelUploaded) -> None:
        """Validate one upload and publish the verdict, once per event."""
        async with self.sessions() as session:
            if await is_processed(session, consumer=self.consumer, event_id=event.event_id):
                log.info("upload already validated", event_id=str(event.event_id))
                return
        report = await self.validate(event)
        common = {
            "event_id": derived_event_id(CONSUMER, event.event_id),
            "model": event.model,
            "version": event.version,
            "artifact_id": event.artifact_id,
            "report": report,
        }
        failure = report.first_failure
        if failure is None:
            await self.bus.publish(ModelValidated(**common, sequence=event.sequence))
        else:
            reason = f"{failure.name}: {failure.message}"
            await self.bus.publish(ModelRejected(**common, reason=reason[:1000]))
        async with self.sessions.begin() as session:
            await claim_event(session, consumer=self.consumer, event_id=event.event_id)
        log.info(
            "upload validated",
            model=event.model,
            version=event.version,
            passed=failure is None,
            failed_check=failure.name if failure else None,
        )

    async def validate(self, event: ModelUploaded) -> ValidationReport:
        """Decrypt the upload into its workers' private directory and run the checks."""
        cfg = self.config
        try:
            # Opened before workers are taken: a missing artifact costs no worker start.
            chunks = await readable(self.artifacts.iter_plaintext(event.artifact_id))
            # Workers started ahead (or now, if none are ready): they have confined
            # themselves and imported onnx/onnxruntime; they read nothing before
            # validate_upload says so.
            async with self.workers.take() as workers:
                upload = workers.workdir / "upload"
                size = await write_stream(chunks, upload, limit=cfg.max_file_size)
                reference = None
                if event.reference_artifact_id is not None:
                    reference = workers.workdir / "reference.npz"
                    try:
                        await write_stream(
                            self.artifacts.iter_plaintext(event.reference_artifact_id),
                            reference,
                            limit=cfg.max_file_size,
                        )
                    except (ArtifactNotFoundError, ArtifactCorruptError) as exc:
                        raise ArtifactUnavailableError(
                            event.reference_artifact_id, str(exc)
                        ) from exc
                return await validate_upload(
                    upload, size=size, reference=reference, config=cfg, workers=workers
                )
        except ArtifactNotFoundError as exc:
            # The store may not be visible here yet: let the bus redeliver.
            raise ArtifactUnavailableError(event.artifact_id, str(exc)) from exc
        except ArtifactCorruptError as exc:
            damaged = f"the stored artifact is damaged: {exc.reason}"
            failure = CheckResult(name="file", outcome=CheckOutcome.FAILED, message=damaged)
            return rejected_at([failure], "file")

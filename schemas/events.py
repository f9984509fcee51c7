"""Events on the bus (NATS JetStream stream ``EAF``, subjects ``eaf.>``).

Every event carries ``event_id`` (also its ``Nats-Msg-Id``, so a re-publish is stored
once), ``occurred_at`` and ``schema_version``; its ``SUBJECT`` names where it is published.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field

from schemas.base import WireModel
from schemas.ids import Sha256Hex
from schemas.reports import AnalysisReport, ValidationReport

__all__ = [
    "EVENT_TYPES",
    "DeploymentCompleted",
    "DeploymentCreated",
    "DeploymentOutcome",
    "DeploymentTargetUpdated",
    "DeviceEnrolled",
    "DeviceOnline",
    "DeviceRemoved",
    "Event",
    "ModelAnalyzed",
    "ModelPerformanceRegressed",
    "ModelRejected",
    "ModelUploaded",
    "ModelValidated",
    "ModelVersionDeleted",
    "TargetState",
    "event_for_subject",
]


def _now() -> datetime:
    return datetime.now(UTC)


class Event(WireModel):
    """The envelope every event shares."""

    SUBJECT: ClassVar[str] = ""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: AwareDatetime = Field(default_factory=_now)
    schema_version: Literal[1] = 1


class _VersionEvent(Event):
    model: str
    version: str


class ModelUploaded(_VersionEvent):
    """A version's bytes are safely stored; validation may begin."""

    SUBJECT: ClassVar[str] = "eaf.model.uploaded"

    sequence: int
    artifact_id: Sha256Hex
    size_bytes: int
    uploaded_by: str = ""
    #: Optional reference inputs/outputs uploaded with the model (an artifact id).
    reference_artifact_id: Sha256Hex | None = None


class ModelValidated(_VersionEvent):
    SUBJECT: ClassVar[str] = "eaf.model.validated"

    artifact_id: Sha256Hex
    report: ValidationReport
    #: The upload's ``sequence`` (``ModelUploaded.sequence``): the registry's upload order.
    #: ``None`` in events published before validated events carried it.
    sequence: int | None = None


class ModelRejected(_VersionEvent):
    SUBJECT: ClassVar[str] = "eaf.model.rejected"

    artifact_id: Sha256Hex
    report: ValidationReport
    reason: str


class ModelAnalyzed(_VersionEvent):
    SUBJECT: ClassVar[str] = "eaf.model.analyzed"

    artifact_id: Sha256Hex
    report: AnalysisReport


class ModelVersionDeleted(_VersionEvent):
    """A version is gone, and why: ``user`` (a ``DELETE`` by ``deleted_by``) or
    ``retention`` (pushed out by ``model_repository.max_versions_per_model``; ``detail``
    says by which upload or sweep and what the limit was)."""

    SUBJECT: ClassVar[str] = "eaf.model.version.deleted"

    artifact_id: Sha256Hex
    reason: Literal["user", "retention"]
    #: The API key's name for a user's deletion; ``""`` for retention.
    deleted_by: str = ""
    detail: str = ""


class TargetState(StrEnum):
    """Where one device is in one deployment."""

    PENDING = "pending"
    NOTIFIED = "notified"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    ACTIVATING = "activating"
    ACTIVE = "active"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        TargetState.ACTIVE,
        TargetState.FAILED,
        TargetState.ROLLED_BACK,
        TargetState.TIMED_OUT,
        TargetState.CANCELLED,
    }
)


class DeploymentOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"


class DeploymentCreated(_VersionEvent):
    SUBJECT: ClassVar[str] = "eaf.deployment.created"

    deployment_id: uuid.UUID
    target_count: int
    strategy: str
    created_by: str = ""


class DeploymentTargetUpdated(Event):
    SUBJECT: ClassVar[str] = "eaf.deployment.target.updated"

    deployment_id: uuid.UUID
    device_id: str
    state: TargetState
    detail: str = ""
    bytes_received: int | None = None


class DeploymentCompleted(Event):
    SUBJECT: ClassVar[str] = "eaf.deployment.completed"

    deployment_id: uuid.UUID
    outcome: DeploymentOutcome
    counts: dict[TargetState, int]


class DeviceEnrolled(Event):
    """A device enrolled: it has new broker credentials and its data keys are sealed to
    the public key named by ``key_id`` from now on.

    ``reenrolled`` says the id was enrolled before (a device re-installed, replaced, or
    back after its removal): its previous credentials and key stopped working at this
    moment. Only a token made for that device id re-enrols one; ``token_created_by`` names
    who made the token, for the audit trail.
    """

    SUBJECT: ClassVar[str] = "eaf.device.enrolled"

    device_id: str
    group: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    #: The id of the device's X25519 public key (first 16 hex digits of its SHA-256).
    key_id: str = ""
    reenrolled: bool = False
    previous_enrolled_at: AwareDatetime | None = None
    previous_key_id: str | None = None
    #: The API key (or command actor) that made the enrolment token.
    token_created_by: str = ""


class DeviceOnline(Event):
    SUBJECT: ClassVar[str] = "eaf.device.online"

    device_id: str
    online: bool


class DeviceRemoved(Event):
    """A device was taken out of the fleet: its broker account is gone, its unfinished
    deployment targets are cancelled, and its metrics are refused from ``occurred_at`` on.

    A removal repeated (or retried) publishes the same event id. The device may come back
    only by enrolling again with a token made for it after the removal (a new
    ``eaf.device.enrolled`` with a later ``occurred_at``).
    """

    SUBJECT: ClassVar[str] = "eaf.device.removed"

    device_id: str
    removed_by: str = ""
    reason: str = ""


class ModelPerformanceRegressed(_VersionEvent):
    """A version performs worse than the one before it on the same devices, by more than
    ``threshold`` for all of the confidence interval ``change_low``..``change_high``
    (two-sided, ``1 - 2 * significance_level``; see ``schemas.stats.MetricComparison`` for
    what ``change`` measures per metric). Fields after ``devices`` are absent (defaults)
    in events published before the tracker judged significance."""

    SUBJECT: ClassVar[str] = "eaf.model.performance.regressed"

    baseline_version: str
    metric: Literal["latency_p95_ms", "error_rate"]
    baseline_value: float
    value: float
    threshold: float
    devices: tuple[str, ...] = ()
    change: float | None = None
    change_low: float | None = None
    change_high: float | None = None
    significance_level: float | None = None
    #: Inferences and intervals (``inference`` points) on each side.
    count: int = 0
    baseline_count: int = 0
    intervals: int = 0
    baseline_intervals: int = 0


EVENT_TYPES: tuple[type[Event], ...] = (
    ModelUploaded,
    ModelValidated,
    ModelRejected,
    ModelAnalyzed,
    ModelVersionDeleted,
    DeploymentCreated,
    DeploymentTargetUpdated,
    DeploymentCompleted,
    DeviceEnrolled,
    DeviceOnline,
    DeviceRemoved,
    ModelPerformanceRegressed,
)

_BY_SUBJECT = {t.SUBJECT: t for t in EVENT_TYPES}


def event_for_subject(subject: str) -> type[Event]:
    """The event class published on ``subject``; ``KeyError`` for an unknown subject."""
    return _BY_SUBJECT[subject]

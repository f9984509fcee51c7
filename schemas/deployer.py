"""Request/reply models of the deployer (``eaf.rpc.deployer.<verb>``).

Enrolment, the device registry and deployments. The REST API maps its routes onto these
subjects one to one; ``DeployerRpc`` declares them.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import AfterValidator, Field, model_validator

from schemas.base import WireModel
from schemas.events import DeploymentOutcome, TargetState
from schemas.ids import DeviceId
from schemas.registry import VersionsInUseReply, VersionsInUseRequest
from schemas.rpc import Rpc

__all__ = [
    "X25519_LOW_ORDER_POINTS",
    "Capabilities",
    "CreateDeployment",
    "CreateEnrollmentToken",
    "DeployerRpc",
    "DeploymentInfo",
    "DeploymentList",
    "DeploymentRef",
    "DeploymentSpec",
    "DeploymentStatus",
    "DeploymentStrategy",
    "DeviceInfo",
    "DeviceList",
    "DeviceMqttSettings",
    "DeviceRef",
    "EnrollReply",
    "EnrollRequest",
    "EnrollmentToken",
    "KeyedDeploymentInfo",
    "ListDeployments",
    "ListDevices",
    "RemoveDevice",
    "RequestId",
    "RollbackRequest",
    "SetLabels",
    "TargetInfo",
    "TargetSelector",
    "check_x25519_public_key",
]

Label = Annotated[str, Field(min_length=1, max_length=128)]
#: A wave's cumulative size: a count (``"1"``) or a share of all targets (``"10%"``).
WaveSpec = Annotated[str, Field(pattern=r"^(?:[1-9][0-9]*|(?:100|[1-9]?[0-9](?:\.[0-9]+)?)%)$")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
#: Opset versions are small numbers (ONNX is at 2x); the bound keeps a device's report sane.
MAX_OPSET = 10_000
#: Seconds: a deployment's ``device_timeout`` may be up to a week.
MAX_DEVICE_TIMEOUT = 7 * 86400.0
#: An idempotency key: the caller's name for one request, the same on every retry of it.
RequestId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        examples=["release-2024-06-01:fleet-a"],
        description=(
            "Idempotency key (1-128 of A-Z a-z 0-9 . _ : -): a retry with the same key and "
            "the same request answers the deployment the first attempt made instead of "
            "starting another; the same key with a different request is refused (conflict). "
            "Keys are kept 24 h."
        ),
    ),
]


# ---- enrolment ------------------------------------------------------------------------

_P25519 = 2**255 - 19
#: The u-coordinates of Curve25519's points of small order (orders 1, 2, 4 and 8; RFC 7748
#: section 7, libsodium's ``has_small_order`` list), with the non-canonical ``p`` and
#: ``p + 1``. X25519 with any of them gives an all-zero shared secret, whatever the private
#: key: a data key sealed to such a "device" is sealed to no secret at all.
X25519_LOW_ORDER_POINTS: frozenset[int] = frozenset(
    {
        0,
        1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        _P25519 - 1,
        _P25519,
        _P25519 + 1,
    }
)


def check_x25519_public_key(value: str) -> str:
    """``value``, the base64 of a raw X25519 public key, if a data key can be sealed to it.

    Raises ``ValueError`` saying why not: not 32 bytes of base64, or a point of small order
    (listed, and the top bit is ignored as X25519 ignores it), or a key that ``cryptography``
    refuses in a trial exchange (it refuses an all-zero shared secret).
    """
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("public_key is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"public_key must be 32 bytes (a raw X25519 key), not {len(raw)}")
    if int.from_bytes(raw, "little") & ((1 << 255) - 1) in X25519_LOW_ORDER_POINTS:
        raise ValueError(
            "public_key is a point of small order (all-zero or low-order X25519 key): no "
            "secret can be shared with it; send the public key of a freshly generated pair"
        )
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError as exc:
        raise ValueError(f"public_key is not a usable X25519 key ({exc})") from None
    return value


class Capabilities(WireModel):
    """What a device's runtime can run, reported at enrolment."""

    onnxruntime_version: str
    #: Highest opset supported per domain ("" is the default ONNX domain).
    opsets: dict[str, Annotated[int, Field(ge=0, le=MAX_OPSET)]] = Field(default_factory=dict)
    execution_providers: tuple[str, ...] = ()
    cpu_arch: str = ""
    #: Bytes, at most 2**53 - 1: what every JSON reader holds exactly.
    memory_bytes: Annotated[int, Field(ge=0, le=2**53 - 1)] = 0
    runtime_version: str = ""


class CreateEnrollmentToken(WireModel):
    """Make a one-time token; the device that uses it gets this group and these labels."""

    device_id: DeviceId | None = None
    group: Label | None = None
    labels: dict[Label, str] = Field(default_factory=dict)
    ttl_seconds: Annotated[int, Field(gt=0, le=30 * 86400)] | None = None
    created_by: str = ""


class EnrollmentToken(WireModel):
    token: str
    expires_at: datetime
    device_id: str | None = None


class EnrollRequest(WireModel):
    token: Annotated[str, Field(min_length=16, max_length=256)]
    device_id: DeviceId
    #: The device's raw 32-byte X25519 public key, base64 (not all-zero, not of low order).
    public_key: Annotated[
        str, Field(pattern=r"^[A-Za-z0-9+/]{43}=$"), AfterValidator(check_x25519_public_key)
    ]
    capabilities: Capabilities


class DeviceMqttSettings(WireModel):
    host: str
    port: int
    tls: bool = False
    username: str
    password: str
    client_id: str
    topic_prefix: str


class EnrollReply(WireModel):
    device_id: str
    mqtt: DeviceMqttSettings
    #: The platform's Ed25519 public key (raw 32 bytes, base64): the device pins it.
    platform_public_key: str
    platform_key_id: str
    window_size: int
    stall_timeout: float


# ---- devices ----------------------------------------------------------------------------


class TargetSelector(WireModel):
    """Exactly one of: one device, a group, or every device whose labels match all pairs."""

    device_id: DeviceId | None = None
    group: Label | None = None
    labels: dict[Label, str] | None = None

    @model_validator(mode="after")
    def _one(self) -> TargetSelector:
        given = [x for x in (self.device_id, self.group, self.labels) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of device_id, group or labels")
        return self


class DeviceRef(WireModel):
    device_id: DeviceId


class ListDevices(WireModel):
    group: str | None = None
    labels: dict[str, str] | None = None
    online: bool | None = None
    #: Also list devices removed from the fleet (their ``removed_at`` is set).
    include_removed: bool = False


class RemoveDevice(WireModel):
    """Take a device out of the fleet (idempotent: a repeat answers the same device)."""

    device_id: DeviceId
    removed_by: str = ""
    #: Why, for the record (stolen, broken, replaced, ...).
    reason: Annotated[str, Field(max_length=500)] = ""


class SetLabels(WireModel):
    device_id: DeviceId
    labels: dict[Label, str]
    #: ``None`` keeps the group; ``""`` clears it.
    group: str | None = None


class DeviceInfo(WireModel):
    device_id: str
    group: str | None
    labels: dict[str, str]
    capabilities: Capabilities
    online: bool
    last_seen: datetime | None
    enrolled_at: datetime
    active_model: str | None = None
    active_version: str | None = None
    previous_model: str | None = None
    previous_version: str | None = None
    last_rejection: str | None = None
    #: When the device was removed from the fleet; ``None`` while it is part of it.
    removed_at: datetime | None = None
    removed_by: str | None = None
    removal_reason: str | None = None


class DeviceList(WireModel):
    devices: tuple[DeviceInfo, ...]


# ---- deployments ------------------------------------------------------------------------


class DeploymentStrategy(StrEnum):
    ALL_AT_ONCE = "all_at_once"
    WAVES = "waves"


class DeploymentStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"


class DeploymentSpec(WireModel):
    """What to deploy where, and how: the body of ``POST /api/v1/deployments``."""

    model: Label
    #: A version, or an alias of the registry (``@production`` or ``production``). Left
    #: out: the model's ``deployable_version``, the newest by upload sequence that is
    #: validated or analyzed (never a rejected one, nor one still validating).
    version: Label | None = None
    target: TargetSelector
    strategy: DeploymentStrategy = DeploymentStrategy.ALL_AT_ONCE
    #: Cumulative wave sizes for ``waves``; the last wave always takes the rest.
    waves: tuple[WaveSpec, ...] = ("1", "10%", "50%", "100%")
    #: Share of a wave that must be active before the next wave starts.
    success_threshold: Fraction = 1.0
    #: Share of a wave that may fail; beyond it the rollout stops.
    error_threshold: Fraction = 0.0
    #: When the rollout stops, roll the devices it changed back to their previous model.
    auto_rollback: bool = False
    #: Seconds without progress before a target times out (default from config); at most
    #: a week, as the retries double it.
    device_timeout: Annotated[float, Field(gt=0, le=MAX_DEVICE_TIMEOUT)] | None = None
    #: Leave out devices that cannot run the model instead of refusing the deployment.
    skip_incompatible: bool = False


class CreateDeployment(DeploymentSpec):
    """The deployer's request: the spec, who asks, and an optional idempotency key.

    REST sets ``created_by`` from the API key and ``request_id`` from the
    ``Idempotency-Key`` header; a command sets them from ``actor`` and ``request_id``.
    """

    #: Always named here: the API resolves a spec without a version before asking.
    version: Label
    created_by: str = ""
    request_id: RequestId | None = None


class DeploymentRef(WireModel):
    deployment_id: str


class RollbackRequest(DeploymentRef):
    """Roll a deployment back; with ``request_id``, a retry answers the same rollback."""

    request_id: RequestId | None = None


class ListDeployments(WireModel):
    model: str | None = None
    status: DeploymentStatus | None = None
    device_id: str | None = None
    limit: Annotated[int, Field(gt=0, le=1000)] = 100


class TargetInfo(WireModel):
    device_id: str
    wave: int
    state: TargetState
    model: str
    version: str
    detail: str = ""
    chunks_received: int = 0
    chunk_count: int = 0
    bytes_received: int = 0
    attempts: int = 0
    updated_at: datetime


class DeploymentInfo(WireModel):
    deployment_id: str
    model: str
    version: str
    artifact_id: str
    kind: Literal["deploy", "rollback"] = "deploy"
    rollback_of: str | None = None
    strategy: DeploymentStrategy
    waves: tuple[int, ...]
    current_wave: int
    success_threshold: float
    error_threshold: float
    auto_rollback: bool
    status: DeploymentStatus
    outcome: DeploymentOutcome | None = None
    reason: str = ""
    created_at: datetime
    updated_at: datetime
    created_by: str = ""
    counts: dict[TargetState, int]
    targets: tuple[TargetInfo, ...] = ()


class KeyedDeploymentInfo(DeploymentInfo):
    """The deployer's reply to a create or rollback that carried a ``request_id``.

    ``replayed`` says the key was seen before: the deployment is the one the first request
    made (the REST API answers 200 instead of 201). Commands and REST drop the flag.
    """

    replayed: bool = False

    def plain(self) -> DeploymentInfo:
        """The same deployment as a ``DeploymentInfo``."""
        return DeploymentInfo.model_validate(self.model_dump(exclude={"replayed"}))


class DeploymentList(WireModel):
    deployments: tuple[DeploymentInfo, ...]


class DeployerRpc:
    """What the deployer answers on ``eaf.rpc.deployer.*``."""

    CREATE_ENROLLMENT_TOKEN = Rpc.of(
        "deployer",
        "create_enrollment_token",
        CreateEnrollmentToken,
        EnrollmentToken,
        "A one-time enrolment token",
    )
    ENROLL = Rpc.of("deployer", "enroll", EnrollRequest, EnrollReply, "Enrol a device")
    LIST_DEVICES = Rpc.of("deployer", "list_devices", ListDevices, DeviceList, "Devices")
    GET_DEVICE = Rpc.of("deployer", "get_device", DeviceRef, DeviceInfo, "One device")
    SET_LABELS = Rpc.of("deployer", "set_labels", SetLabels, DeviceInfo, "Set a device's labels")
    REMOVE_DEVICE = Rpc.of(
        "deployer", "remove_device", RemoveDevice, DeviceInfo, "Remove a device from the fleet"
    )
    CREATE_DEPLOYMENT = Rpc.of(
        "deployer",
        "create_deployment",
        CreateDeployment,
        KeyedDeploymentInfo,
        "Start a deployment",
    )
    LIST_DEPLOYMENTS = Rpc.of(
        "deployer", "list_deployments", ListDeployments, DeploymentList, "Deployments"
    )
    GET_DEPLOYMENT = Rpc.of(
        "deployer", "get_deployment", DeploymentRef, DeploymentInfo, "One deployment"
    )
    PAUSE = Rpc.of("deployer", "pause", DeploymentRef, DeploymentInfo, "Pause a deployment")
    RESUME = Rpc.of("deployer", "resume", DeploymentRef, DeploymentInfo, "Resume a deployment")
    CANCEL = Rpc.of("deployer", "cancel", DeploymentRef, DeploymentInfo, "Cancel a deployment")
    ROLLBACK = Rpc.of(
        "deployer", "rollback", RollbackRequest, KeyedDeploymentInfo, "Roll a deployment back"
    )
    #: What retention must keep: the registry asks before it prunes or deletes.
    VERSIONS_IN_USE = Rpc.of(
        "deployer",
        "versions_in_use",
        VersionsInUseRequest,
        VersionsInUseReply,
        "Versions deployed or kept for rollback",
    )

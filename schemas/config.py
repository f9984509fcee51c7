"""The configuration model: one TOML file, overridable per key by ``EAF_<SECTION>__<KEY>``.

Every section is a frozen model that forbids unknown keys, so a typo in the file is an
error at start-up rather than a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "ApiConfig",
    "DatabaseConfig",
    "DeployerConfig",
    "DeploymentConfig",
    "InfluxDBConfig",
    "IngesterConfig",
    "ModelRepositoryConfig",
    "MqttConfig",
    "NatsConfig",
    "PerformanceTrackingConfig",
    "SecurityConfig",
    "Settings",
    "StackConfig",
]

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelRepositoryConfig(_Section):
    """Where artifacts live and how many versions of a model are kept."""

    storage_path: Path = Path("./var/models")
    #: Set on hosts without ``storage_path``: artifacts are read through the API and cached.
    artifact_url: str = ""
    cache_path: Path = Path("./var/cache")
    max_versions_per_model: PositiveInt = 5
    max_upload_bytes: PositiveInt = 4 * 1024**3
    #: An artifact no version refers to (uploaded with ``POST /api/v1/artifacts`` and never
    #: registered, or left by a registration that failed) is deleted once it is this old;
    #: so are temp files of uploads that never finished.
    orphan_grace_hours: PositiveFloat = 24.0


class DeploymentConfig(_Section):
    """Rollout timing and the transfer's chunking."""

    #: Seconds without progress before a target times out.
    default_device_timeout: PositiveFloat = 30.0
    #: Plaintext bytes per chunk, both at rest and on the wire.
    chunk_size: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 262_144
    #: Chunk requests a device keeps outstanding.
    window_size: Annotated[int, Field(ge=1, le=1024)] = 16
    #: Seconds a signed manifest stays valid; the deployer re-issues expired ones.
    manifest_ttl: PositiveInt = 86_400


class SecurityConfig(_Section):
    """Encryption at rest and manifest signing."""

    encryption_enabled: bool = True
    #: The current key-encryption key, which wraps every new artifact's data key: a file of
    #: 32 raw bytes, or PEM (a ``EDGEAIFORGE KEK`` block of 32 bytes, or a private key the
    #: KEK is derived from with HKDF); see docs/security.md.
    encryption_key_path: Path = Path("./var/keys/kek.key")
    #: Earlier KEKs that still open the data keys they wrapped (never wrap new ones): kept
    #: here while ``python -m services.registry rotate-kek`` wraps everything again.
    previous_encryption_key_paths: tuple[Path, ...] = ()
    #: Ed25519 private key (PEM) that signs deployment manifests.
    signing_key_path: Path = Path("./var/keys/signing.pem")
    #: The signed statements that moved the signing key from one key to the next (JSON),
    #: sent to devices with each manifest; written by ``python -m services.deployer
    #: rotate-signing-key``. Absent: the signing key was never rotated.
    signing_chain_path: Path = Path("./var/keys/signing-chain.json")
    #: Development mode generates missing keys; otherwise a missing key stops the service.
    dev_mode: bool = False


class PerformanceTrackingConfig(_Section):
    """How long metrics are kept and when a new version counts as a regression."""

    #: Days; becomes the InfluxDB retention policy.
    metrics_retention_period: PositiveInt = 90
    #: A new version regresses when its p95 latency grows by more than this fraction.
    p95_regression_threshold: PositiveFloat = 0.2
    #: ... or its error rate grows by more than this many percentage points (0..1).
    error_rate_regression_threshold: PositiveFloat = 0.02
    #: Seconds of metrics the tracker compares a version on.
    evaluation_window: PositiveFloat = 3600.0
    #: Seconds between the tracker's regression checks.
    evaluation_interval: PositiveFloat = 60.0
    #: Inferences each side needs before a comparison counts.
    min_inferences: PositiveInt = 100
    #: Chance, at most, that a version no worse than the thresholds is called regressed
    #: (one-sided, per comparison; docs/tracker.md).
    significance_level: Annotated[float, Field(gt=0, le=0.2)] = 0.01


class NatsConfig(_Section):
    """The service bus."""

    url: str = "nats://127.0.0.1:4222"
    stream: str = "EAF"
    user: str | None = None
    password: SecretStr | None = None
    #: Deliveries of one event before it is moved to the dead-letter subject.
    max_deliver: Annotated[int, Field(ge=1)] = 5
    #: Seconds to wait before each redelivery after a failure (last value repeats).
    retry_backoff: tuple[float, ...] = (1.0, 5.0, 30.0)
    #: Seconds a consumer may hold an event before the server redelivers it.
    ack_wait: PositiveFloat = 60.0
    request_timeout: PositiveFloat = 10.0


class MqttConfig(_Section):
    """The device broker."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    tls: bool = False
    ca_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    topic_prefix: str = "eaf/v1"
    keepalive: PositiveInt = 30


class InfluxDBConfig(_Section):
    """Where metrics are written (the v1 ``/write`` and ``/query`` API)."""

    url: str = "http://127.0.0.1:8086"
    database: str = "edgeaiforge"
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    batch_size: PositiveInt = 5000
    flush_interval: PositiveFloat = 1.0


class IngesterConfig(_Section):
    """The metrics ingester: its MQTT session, on-disk spool and Prometheus endpoint."""

    #: SQLite file holding accepted points until InfluxDB has them, and set-aside messages.
    spool_path: Path = Path("./var/ingester/spool.db")
    #: Points the spool holds at most; when full, the oldest are dropped and counted.
    max_spool_points: PositiveInt = 5_000_000
    #: Set-aside (refused) messages kept; the oldest go first.
    max_rejected: PositiveInt = 10_000
    #: Prometheus endpoint; 0 turns it off.
    metrics_port: Annotated[int, Field(ge=0, lt=65536)] = 9464
    metrics_host: str = "127.0.0.1"
    #: Stable MQTT client id: the broker keeps this session's messages while it is away.
    client_id: str = "eaf-ingester-1"
    #: Shared-subscription group; instances in one group share the devices' messages.
    shared_group: str = "ingester"
    #: Seconds the broker keeps the session (and queues messages) after a disconnect.
    session_expiry: PositiveInt = 7 * 86400
    #: Unacknowledged messages the broker may have in flight to one instance.
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 1000


class DatabaseConfig(_Section):
    """The services' SQL database (SQLite by default, PostgreSQL by URL)."""

    url: str = "sqlite+aiosqlite:///./var/edgeaiforge.db"
    echo: bool = False


class StackConfig(_Section):
    """The local stack that ``edgeaiforge up`` runs."""

    #: Servers' data, logs (``log/``), process records (``run/``) and generated secrets.
    data_dir: Path = Path("./var")


class SandboxLimits(_Section):
    """Limits of one sandboxed worker process (one validation check, one analysis)."""

    #: CPU seconds (RLIMIT_CPU); the kernel kills the worker beyond them.
    cpu_seconds: PositiveInt = 120
    #: Address space in MiB (RLIMIT_AS); allocations beyond it fail inside the worker.
    memory_mb: Annotated[int, Field(ge=256)] = 4096
    #: Seconds of wall-clock time before the worker's process group is killed.
    wall_seconds: PositiveFloat = 180.0


class ValidatorConfig(_Section):
    """What the validator accepts (the policy) and how it runs its checks."""

    #: Allowed operator domains and the opset range [min, max] of each; a domain not
    #: listed (a custom one) is refused. "ai.onnx" also covers the "" spelling.
    allowed_opsets: dict[str, tuple[int, int]] = Field(
        default_factory=lambda: {"ai.onnx": (7, 24), "ai.onnx.ml": (1, 5)}
    )
    ir_version_min: PositiveInt = 3
    ir_version_max: PositiveInt = 12
    #: Largest uploaded artifact (the .onnx file, or the ZIP of a model with external data).
    max_file_size: PositiveInt = 2 * 1024**3
    #: Largest element count of any declared or inferred tensor.
    max_tensor_elements: PositiveInt = 1_000_000_000
    max_node_count: PositiveInt = 100_000
    #: Deepest nesting of subgraphs (If/Loop/Scan bodies); the main graph is depth 0.
    max_graph_depth: Annotated[int, Field(ge=0)] = 8
    #: Value of a dynamic dimension in generated inputs, unless named in dynamic_dims.
    dynamic_dim_default: PositiveInt = 1
    dynamic_dims: dict[str, PositiveInt] = Field(default_factory=dict)
    #: Reference outputs match when |actual - expected| <= atol + rtol * |expected|.
    reference_rtol: Annotated[float, Field(ge=0)] = 1e-3
    reference_atol: Annotated[float, Field(ge=0)] = 1e-4
    #: Refuse to start when the worker cannot be put in its own network namespace.
    require_network_isolation: bool = True
    #: Where decrypted models are placed for the workers (private temp dirs); "" = $TMPDIR.
    work_dir: str = ""
    #: Keep one set of workers started (confined, libraries imported, idle) for the next
    #: upload; each set still serves one upload only. Off: workers start per upload.
    prestart_workers: bool = True
    sandbox: SandboxLimits = SandboxLimits()


class AnalyzerConfig(_Section):
    """How the analyzer measures a model, and how it runs its sandbox (the validator's
    keys of the same names, with the same defaults, for the analyzer's workers)."""

    #: onnxruntime intra-op threads for the latency measurement.
    threads: PositiveInt = 1
    warmup_runs: Annotated[int, Field(ge=0)] = 5
    runs: PositiveInt = 50
    #: Per-node costs kept in a report (the costliest); totals always cover every node.
    max_nodes_in_report: PositiveInt = 500
    #: Value of a dynamic dimension in the profile and the latency inputs, unless named in
    #: dynamic_dims.
    dynamic_dim_default: PositiveInt = 1
    dynamic_dims: dict[str, PositiveInt] = Field(default_factory=dict)
    #: Largest artifact the analyzer unpacks (the .onnx file, or the ZIP's contents).
    max_file_size: PositiveInt = 2 * 1024**3
    #: Refuse to start when the worker cannot be put in its own network namespace.
    require_network_isolation: bool = True
    #: Where decrypted models are placed for the workers (private temp dirs); "" = $TMPDIR.
    work_dir: str = ""
    #: Keep one pair of workers started for the next model (as ``validator.prestart_workers``).
    prestart_workers: bool = True
    sandbox: SandboxLimits = SandboxLimits(cpu_seconds=300, wall_seconds=300.0)


class ApiConfig(_Section):
    """The REST API (``services/api``) and how services on other hosts reach it."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 8000
    #: Bearer token that services on hosts without ``storage_path`` send to
    #: ``model_repository.artifact_url`` (an API key, role ``deployer`` or ``viewer``).
    service_token: SecretStr | None = None
    #: Days an API key is valid unless its creator gives another lifetime; 0: no expiry.
    key_lifetime_days: Annotated[int, Field(ge=0)] = 365
    #: Days after its creation a key without an expiry (one made before keys expired, or
    #: created with lifetime 0) is still accepted; 0: such keys never expire.
    unexpiring_key_max_age_days: Annotated[int, Field(ge=0)] = 0


class DeployerConfig(_Section):
    """The deployer service: device enrolment and rollout supervision."""

    #: Mosquitto dynamic-security admin (creates one client and role per device);
    #: unset means ``mqtt.username``/``mqtt.password``.
    admin_username: str | None = None
    admin_password: SecretStr | None = None
    #: Broker address given to devices at enrolment; "" / unset means ``mqtt.host``/``port``.
    device_mqtt_host: str = ""
    device_mqtt_port: Annotated[int, Field(gt=0, lt=65536)] | None = None
    #: Seconds an enrolment token stays valid.
    enrollment_token_ttl: PositiveInt = 86_400
    #: Re-notifications of a target without progress before it counts as timed out.
    max_retries: Annotated[int, Field(ge=0)] = 3
    #: Seconds between two passes of the rollout supervisor.
    tick_interval: PositiveFloat = 1.0
    #: Seconds a device waits without a chunk before (re-)requesting what it lacks.
    stall_timeout: PositiveFloat = 5.0
    #: A wave with at least this many targets gets the artifact broadcast once.
    broadcast_min_targets: PositiveInt = 2


class Settings(BaseSettings):
    """The whole configuration. Build it with ``services.common.config.load_settings``."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="EAF_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )

    model_repository: ModelRepositoryConfig = ModelRepositoryConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    security: SecurityConfig = SecurityConfig()
    performance_tracking: PerformanceTrackingConfig = PerformanceTrackingConfig()
    nats: NatsConfig = NatsConfig()
    mqtt: MqttConfig = MqttConfig()
    influxdb: InfluxDBConfig = InfluxDBConfig()
    ingester: IngesterConfig = IngesterConfig()
    database: DatabaseConfig = DatabaseConfig()
    api: ApiConfig = ApiConfig()
    validator: ValidatorConfig = ValidatorConfig()
    analyzer: AnalyzerConfig = AnalyzerConfig()
    stack: StackConfig = StackConfig()
    deployer: DeployerConfig = DeployerConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment overrides them.
        return (env_settings, init_settings)

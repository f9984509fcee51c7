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
    "DatabaseConfig",
    "DeploymentConfig",
    "InfluxDBConfig",
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
    #: Key-encryption key (32 random bytes) that wraps every artifact's data key.
    encryption_key_path: Path = Path("./var/keys/kek.key")
    #: Ed25519 private key (PEM) that signs deployment manifests.
    signing_key_path: Path = Path("./var/keys/signing.pem")
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


class DatabaseConfig(_Section):
    """The services' SQL database (SQLite by default, PostgreSQL by URL)."""

    url: str = "sqlite+aiosqlite:///./var/edgeaiforge.db"
    echo: bool = False


class StackConfig(_Section):
    """The local stack that ``edgeaiforge up`` runs."""

    #: Servers' data, logs (``log/``), process records (``run/``) and generated secrets.
    data_dir: Path = Path("./var")


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
    database: DatabaseConfig = DatabaseConfig()
    stack: StackConfig = StackConfig()

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

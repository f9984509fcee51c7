"""Configuration: the seed's example loads; every kind of bad input names file and key."""

from pathlib import Path

import pytest

from services.common.config import ConfigError, load_settings

SEED = """
[model_repository]
storage_path = "/path/to/model/storage"
max_versions_per_model = 5

[deployment]
default_device_timeout = 30  # seconds

[security]
encryption_enabled = true
encryption_key_path = "/path/to/key.pem"

[performance_tracking]
metrics_retention_period = 90  # days
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgeaiforge.toml"
    path.write_text(text)
    return path


def test_seed_example_loads(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, SEED))
    assert s.model_repository.storage_path == Path("/path/to/model/storage")
    assert s.model_repository.max_versions_per_model == 5
    assert s.deployment.default_device_timeout == 30
    assert s.security.encryption_enabled is True
    assert s.security.encryption_key_path == Path("/path/to/key.pem")
    assert s.performance_tracking.metrics_retention_period == 90


def test_project_config_files_load() -> None:
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "config").glob("*.toml")):
        load_settings(path)


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EAF_MODEL_REPOSITORY__MAX_VERSIONS_PER_MODEL", "9")
    monkeypatch.setenv("EAF_MQTT__PORT", "18830")
    s = load_settings(write(tmp_path, SEED))
    assert s.model_repository.max_versions_per_model == 9
    assert s.model_repository.storage_path == Path("/path/to/model/storage")
    assert s.mqtt.port == 18830


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, SEED + "\n[mqtt]\nprot = 1883\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(path) in str(err.value)
    assert "mqtt.prot" in str(err.value)
    assert "unknown key" in str(err.value)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'modle_repository': unknown key"):
        load_settings(write(tmp_path, "[modle_repository]\nstorage_path='x'\n"))


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[model_repository]\nmax_versions_per_model = 'five'\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert str(path) in message
    assert "model_repository.max_versions_per_model" in message
    assert "'five'" in message


def test_out_of_range_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model_repository.max_versions_per_model"):
        load_settings(write(tmp_path, "[model_repository]\nmax_versions_per_model = 0\n"))


def test_wrong_type_in_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EAF_MQTT__PORT", "not-a-port")
    with pytest.raises(ConfigError, match="EAF_MQTT__PORT"):
        load_settings(write(tmp_path, SEED))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(path) in str(err.value)
    assert "does not exist" in str(err.value)


def test_malformed_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[model_repository\nstorage_path = \n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(path) in str(err.value)
    assert "not valid TOML" in str(err.value)


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, SEED))
    with pytest.raises(ValueError):
        s.mqtt.port = 1  # type: ignore[misc]

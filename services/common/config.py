"""Load the configuration file and the environment into a frozen ``Settings``.

Only entrypoints call this; everything below them receives the settings object.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.config import Settings

__all__ = ["ConfigError", "config_path_from_env", "load_settings"]

ENV_CONFIG_PATH = "EAF_CONFIG"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


def config_path_from_env(environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file named by ``EAF_CONFIG``, if any."""
    value = (os.environ if environ is None else environ).get(ENV_CONFIG_PATH)
    return Path(value) if value else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), ["the file does not exist"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"the file cannot be read: {exc.strerror}"]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["the file is not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None


def _describe(error: Mapping[str, Any], path: Path | None) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    env_name = "EAF_" + "__".join(part.upper() for part in loc)
    where = f"environment variable {env_name}" if env_name in os.environ else f"key '{key}'"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key (check the spelling; see the configuration reference)"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{where}: {error['msg']}{shown}"


def load_settings(path: Path | str | None = None) -> Settings:
    """Read ``path`` (TOML) if given, then apply ``EAF_<SECTION>__<KEY>`` overrides.

    Without a path, the defaults and the environment make the settings. A missing or
    malformed file, an unknown key or a wrong type raises ``ConfigError``.
    """
    file = Path(path) if path is not None else None
    data = _read_toml(file) if file is not None else {}
    try:
        return Settings(**data)
    except ValidationError as exc:
        source = str(file) if file is not None else "the environment"
        raise ConfigError(source, [_describe(e, file) for e in exc.errors()]) from None

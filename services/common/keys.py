"""Loading (and, in development mode, creating) the platform's keys."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelkit.durable import atomic_write
from schemas.config import SecurityConfig
from schemas.crypto import KEK_LEN
from services.common.logging import get_logger

__all__ = ["KeyFileError", "load_kek", "load_signing_key", "write_secret_file"]

log = get_logger(__name__)


class KeyFileError(Exception):
    """A key file is missing, unreadable or malformed."""

    def __init__(self, path: Path, config_key: str, reason: str) -> None:
        self.path = path
        super().__init__(
            f"{reason}: {path} (set security.{config_key}, or security.dev_mode = true "
            "to generate development keys)"
        )


def write_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600, atomically, creating its directory (0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, data, mode=0o600)


def _read(path: Path, config_key: str, dev_mode: bool, make: bytes | None) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if not dev_mode or make is None:
            raise KeyFileError(path, config_key, "key file does not exist") from None
        write_secret_file(path, make)
        log.warning("generated a development key", path=str(path), setting=config_key)
        return make
    except OSError as exc:
        raise KeyFileError(path, config_key, f"key file cannot be read ({exc.strerror})") from None


def load_kek(config: SecurityConfig) -> bytes | None:
    """The key-encryption key, or ``None`` when encryption at rest is disabled."""
    if not config.encryption_enabled:
        return None
    data = _read(
        config.encryption_key_path, "encryption_key_path", config.dev_mode, os.urandom(KEK_LEN)
    )
    if len(data) != KEK_LEN:
        raise KeyFileError(
            config.encryption_key_path,
            "encryption_key_path",
            f"key-encryption key must be exactly {KEK_LEN} raw bytes, found {len(data)}",
        )
    return data


def load_signing_key(config: SecurityConfig) -> Ed25519PrivateKey:
    """The Ed25519 key that signs manifests (PEM, PKCS#8)."""
    fresh = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    data = _read(config.signing_key_path, "signing_key_path", config.dev_mode, fresh)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(
            config.signing_key_path, "signing_key_path", "not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(config.signing_key_path, "signing_key_path", "not an Ed25519 key")
    return key

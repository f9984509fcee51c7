"""Loading (and, in development mode, creating) the platform's keys.

The key-encryption keys form a ``KeyRing``: the current KEK wraps every new data key, and
the earlier ones (``security.previous_encryption_key_paths``) still open what they wrapped
until a rotation has wrapped it again. A KEK file holds 32 raw bytes, or PEM: a
``EDGEAIFORGE KEK`` block of 32 bytes, or a private key from which the KEK is derived with
HKDF-SHA256 (docs/security.md).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelkit.durable import atomic_write
from schemas import crypto
from schemas.config import SecurityConfig
from schemas.crypto import KEK_LEN
from services.common.logging import get_logger

__all__ = [
    "KEK_PEM_LABEL",
    "KeyFileError",
    "KeyRing",
    "UnknownKekError",
    "kek_from_file_bytes",
    "kek_pem",
    "load_kek",
    "load_signing_key",
    "signing_key_from_pem",
    "write_secret_file",
]

log = get_logger(__name__)

#: The PEM label of a block that holds the 32 raw bytes of a KEK.
KEK_PEM_LABEL = "EDGEAIFORGE KEK"
#: HKDF ``info`` for a KEK derived from a PEM private key.
_KEK_HKDF_INFO = b"EdgeAIForge KEK from private key v1"
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL | re.ASCII
)


class KeyFileError(Exception):
    """A key file is missing, unreadable or malformed."""

    def __init__(self, path: Path, config_key: str, reason: str) -> None:
        self.path = path
        super().__init__(
            f"{reason}: {path} (set security.{config_key}, or security.dev_mode = true "
            "to generate development keys)"
        )


class UnknownKekError(Exception):
    """A data key was wrapped by a KEK that is not in the keyring."""

    def __init__(self, kek_id: str, known: tuple[str, ...]) -> None:
        self.kek_id = kek_id
        super().__init__(
            f"the data key was wrapped by key-encryption key {kek_id}, which is not loaded "
            f"(loaded: {', '.join(known)}): add its file to "
            "security.previous_encryption_key_paths"
        )


@dataclass(frozen=True)
class KeyRing:
    """The current KEK and the earlier ones that still open what they wrapped."""

    active: bytes
    previous: tuple[bytes, ...] = ()
    _by_id: dict[str, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kek in (self.active, *self.previous):
            if len(kek) != KEK_LEN:
                raise ValueError(f"a key-encryption key is {KEK_LEN} bytes, not {len(kek)}")
        by_id = {crypto.kek_id(k): k for k in self.previous}
        by_id[crypto.kek_id(self.active)] = self.active
        object.__setattr__(self, "_by_id", by_id)

    @property
    def active_id(self) -> str:
        return crypto.kek_id(self.active)

    def ids(self) -> tuple[str, ...]:
        """Every loaded KEK's id, the current one first."""
        return (self.active_id, *(i for i in self._by_id if i != self.active_id))

    def get(self, kek_id: str) -> bytes | None:
        return self._by_id.get(kek_id)

    def unwrap(self, wrapped: bytes, kek_id: str) -> bytes:
        """The data key; ``kek_id`` "" (wrapped before ids were stored) tries every KEK.

        Raises ``UnknownKekError`` or ``crypto.KeyUnwrapError``.
        """
        if kek_id:
            kek = self.get(kek_id)
            if kek is None:
                raise UnknownKekError(kek_id, self.ids())
            return crypto.unwrap_dek(kek, wrapped)
        for kek in self._by_id.values():
            try:
                return crypto.unwrap_dek(kek, wrapped)
            except crypto.KeyUnwrapError:
                continue
        raise crypto.KeyUnwrapError()


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


def kek_pem(kek: bytes) -> bytes:
    """A KEK as a PEM ``EDGEAIFORGE KEK`` block."""
    body = base64.encodebytes(kek).decode().strip()
    return f"-----BEGIN {KEK_PEM_LABEL}-----\n{body}\n-----END {KEK_PEM_LABEL}-----\n".encode()


def kek_from_file_bytes(data: bytes) -> bytes:
    """The 32-byte KEK a key file holds; raises ``ValueError`` saying what is wrong.

    - 32 bytes that are not PEM: the KEK itself;
    - PEM, one ``EDGEAIFORGE KEK`` block: its 32 bytes;
    - PEM, one unencrypted private key (PKCS#8, or the traditional EC/RSA forms; any
      algorithm): HKDF-SHA256 over its PKCS#8 DER encoding, salt none, info
      ``EdgeAIForge KEK from private key v1``.
    """
    if b"-----BEGIN " not in data:
        if len(data) == KEK_LEN:
            return data
        hint = (
            " (this looks like hex: write the raw bytes, e.g. `head -c 32 /dev/urandom`)"
            if re.fullmatch(rb"\s*[0-9a-fA-F]{64}\s*", data)
            else ""
        )
        raise ValueError(
            f"key-encryption key must be exactly {KEK_LEN} raw bytes or PEM, found "
            f"{len(data)} bytes{hint}"
        )
    blocks = _PEM_BLOCK.findall(data)
    if len(blocks) != 1:
        raise ValueError(f"a PEM key-encryption key file holds one PEM block, found {len(blocks)}")
    label = blocks[0][0].decode()
    if label == KEK_PEM_LABEL:
        try:
            raw = base64.b64decode(blocks[0][1], validate=False)
        except binascii.Error:
            raise ValueError(f"the {KEK_PEM_LABEL} block is not base64") from None
        if len(raw) != KEK_LEN:
            raise ValueError(f"the {KEK_PEM_LABEL} block holds {len(raw)} bytes, not {KEK_LEN}")
        return raw
    if "PRIVATE KEY" not in label or "ENCRYPTED" in label:
        raise ValueError(
            f"a PEM {label!r} block is not a key-encryption key: use a {KEK_PEM_LABEL!r} "
            "block of 32 bytes or an unencrypted private key"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError("the PEM private key is encrypted: store it unencrypted") from None
    except ValueError as exc:
        raise ValueError(f"the PEM private key cannot be read: {exc}") from None
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return HKDF(algorithm=hashes.SHA256(), length=KEK_LEN, salt=None, info=_KEK_HKDF_INFO).derive(
        der
    )


def _load_one_kek(path: Path, config_key: str, dev_mode: bool) -> bytes:
    fresh = os.urandom(KEK_LEN)
    made = kek_pem(fresh) if path.suffix == ".pem" else fresh
    data = _read(path, config_key, dev_mode, made)
    try:
        return kek_from_file_bytes(data)
    except ValueError as exc:
        raise KeyFileError(path, config_key, str(exc)) from None


def load_kek(config: SecurityConfig) -> KeyRing | None:
    """The key-encryption keys, or ``None`` when encryption at rest is disabled."""
    if not config.encryption_enabled:
        return None
    active = _load_one_kek(config.encryption_key_path, "encryption_key_path", config.dev_mode)
    previous = tuple(
        _load_one_kek(p, "previous_encryption_key_paths", dev_mode=False)
        for p in config.previous_encryption_key_paths
    )
    return KeyRing(active=active, previous=previous)


def load_signing_key(config: SecurityConfig) -> Ed25519PrivateKey:
    """The Ed25519 key that signs manifests (PEM, PKCS#8)."""
    fresh = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    data = _read(config.signing_key_path, "signing_key_path", config.dev_mode, fresh)
    return signing_key_from_pem(data, config.signing_key_path)


def signing_key_from_pem(data: bytes, path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(path, "signing_key_path", "not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(path, "signing_key_path", "not an Ed25519 key")
    return key

"""The cryptography of the wire format, as pure functions (no I/O).

- Artifacts are encrypted once with a per-artifact data key (DEK) using the STREAM
  construction over AES-256-GCM: nonce = 7-byte random prefix ‖ 4-byte big-endian chunk
  counter ‖ 1-byte last-chunk flag. Reordered, truncated or extended ciphertext fails.
- At rest the DEK is wrapped with the key-encryption key (AES key wrap, RFC 3394); the
  wrapped key is stored with the KEK's id (``kek_id``), so a keyring of several KEKs
  opens it and a rotation knows what is left to wrap again.
- For a device the DEK is sealed to its X25519 public key with HPKE (RFC 9180,
  DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, base mode); ``info`` binds the
  sealed key to the device and the artifact.
- Manifests are signed with Ed25519 over a domain-separated canonical JSON encoding.

The edge runtime uses exactly these functions, and so can another implementation: see
``docs/device-protocol.md``.
"""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

__all__ = [
    "DEK_LEN",
    "HPKE_SUITE_NAME",
    "KEK_ID_LEN",
    "KEK_LEN",
    "KEY_ROTATION_SIGNATURE_CONTEXT",
    "MANIFEST_SIGNATURE_CONTEXT",
    "NONCE_PREFIX_LEN",
    "TAG_LEN",
    "ChunkIntegrityError",
    "CryptoError",
    "KeyUnwrapError",
    "SealedKeyError",
    "SignatureError",
    "chunk_count",
    "dek_info",
    "kek_id",
    "key_id",
    "new_dek",
    "new_nonce_prefix",
    "open_chunk",
    "open_dek",
    "seal_chunk",
    "seal_dek",
    "sign",
    "stream_nonce",
    "unwrap_dek",
    "verify",
    "wrap_dek",
]

DEK_LEN = 32
KEK_LEN = 32
#: Bytes of a KEK id as stored in an artifact's header (16 hex digits).
KEK_ID_LEN = 8
NONCE_PREFIX_LEN = 7
TAG_LEN = 16
HPKE_SUITE_NAME = "DHKEM-X25519-HKDF-SHA256/HKDF-SHA256/AES-256-GCM"
MANIFEST_SIGNATURE_CONTEXT = b"EdgeAIForge manifest v1\x00"
KEY_ROTATION_SIGNATURE_CONTEXT = b"EdgeAIForge key rotation v1\x00"
_MAX_CHUNKS = 2**32

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class CryptoError(Exception):
    """Root of every refusal on cryptographic grounds."""


class ChunkIntegrityError(CryptoError):
    def __init__(self, index: int) -> None:
        self.index = index
        super().__init__(
            f"chunk {index} failed authentication: the data was altered, reordered, "
            "truncated or extended, or belongs to another artifact"
        )


class KeyUnwrapError(CryptoError):
    def __init__(self) -> None:
        super().__init__(
            "the artifact's data key cannot be unwrapped: wrong key-encryption key or a "
            "damaged key record"
        )


class SealedKeyError(CryptoError):
    def __init__(self) -> None:
        super().__init__(
            "the sealed data key cannot be opened: it was sealed for another device or "
            "artifact, or it was altered"
        )


class SignatureError(CryptoError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: signature does not verify with the pinned platform key")


def new_dek() -> bytes:
    return os.urandom(DEK_LEN)


def new_nonce_prefix() -> bytes:
    return os.urandom(NONCE_PREFIX_LEN)


def chunk_count(size: int, chunk_size: int) -> int:
    """Chunks for ``size`` plaintext bytes; an empty artifact is one empty final chunk."""
    return max(1, -(-size // chunk_size))


def stream_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """The 12-byte STREAM nonce of chunk ``index``."""
    if len(prefix) != NONCE_PREFIX_LEN:
        raise ValueError(f"nonce prefix must be {NONCE_PREFIX_LEN} bytes")
    if not 0 <= index < _MAX_CHUNKS:
        raise ValueError(f"chunk index {index} out of range")
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def seal_chunk(dek: bytes, prefix: bytes, index: int, last: bool, plaintext: bytes) -> bytes:
    """Encrypt one chunk; the result is ``len(plaintext) + TAG_LEN`` bytes."""
    return AESGCM(dek).encrypt(stream_nonce(prefix, index, last), plaintext, None)


def open_chunk(dek: bytes, prefix: bytes, index: int, last: bool, ciphertext: bytes) -> bytes:
    """Decrypt and authenticate one chunk, or raise ``ChunkIntegrityError``."""
    try:
        return AESGCM(dek).decrypt(stream_nonce(prefix, index, last), ciphertext, None)
    except InvalidTag:
        raise ChunkIntegrityError(index) from None


def wrap_dek(kek: bytes, dek: bytes) -> bytes:
    return aes_key_wrap(kek, dek)


def unwrap_dek(kek: bytes, wrapped: bytes) -> bytes:
    try:
        return aes_key_unwrap(kek, wrapped)
    except (InvalidUnwrap, ValueError):
        raise KeyUnwrapError() from None


def kek_id(kek: bytes) -> str:
    """A key-encryption key's public name: 16 hex digits of a domain-separated SHA-256.

    It tells which key wrapped a data key without revealing anything of the key.
    """
    return hashlib.sha256(b"EdgeAIForge KEK id v1\x00" + kek).hexdigest()[: 2 * KEK_ID_LEN]


def dek_info(device_id: str, artifact_id: str) -> bytes:
    """HPKE ``info``: binds a sealed key to one device and one artifact."""
    return f"EdgeAIForge dek v1|{device_id}|{artifact_id}".encode()


def seal_dek(dek: bytes, device_public_key: bytes, *, device_id: str, artifact_id: str) -> bytes:
    """Seal the DEK to a device's raw 32-byte X25519 public key (HPKE base mode)."""
    public = X25519PublicKey.from_public_bytes(device_public_key)
    return _SUITE.encrypt(dek, public, info=dek_info(device_id, artifact_id))


def open_dek(
    sealed: bytes, device_private_key: X25519PrivateKey, *, device_id: str, artifact_id: str
) -> bytes:
    try:
        dek = _SUITE.decrypt(sealed, device_private_key, info=dek_info(device_id, artifact_id))
    except Exception:  # the HPKE binding raises several types; all mean "not for us"
        raise SealedKeyError() from None
    if len(dek) != DEK_LEN:
        raise SealedKeyError()
    return dek


def key_id(public_key: Ed25519PublicKey | X25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(
    private_key: Ed25519PrivateKey,
    message: bytes,
    *,
    context: bytes = MANIFEST_SIGNATURE_CONTEXT,
) -> bytes:
    """Ed25519 over ``context ‖ message``: a manifest's signature never passes for a key
    rotation statement's, nor the other way."""
    return private_key.sign(context + message)


def verify(
    public_key: Ed25519PublicKey,
    message: bytes,
    signature: bytes,
    *,
    what: str,
    context: bytes = MANIFEST_SIGNATURE_CONTEXT,
) -> None:
    try:
        public_key.verify(signature, context + message)
    except InvalidSignature:
        raise SignatureError(what) from None

"""The deployment manifest: what a device should run, signed by the platform.

On the wire (the retained ``devices/{id}/desired`` topic) it travels as a
``SignedManifest``: the canonical JSON bytes of the ``Manifest`` (base64) and an Ed25519
signature over them. The device verifies the signature over the exact bytes it received
and only then parses them, so no re-encoding ambiguity can creep in. After a rotation of
the platform's key, the envelope also carries the chain of rotation statements
(``schemas.keychain``) that leads a device from the key it trusts to the signing key.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, ValidationError, field_validator

from schemas import crypto
from schemas.base import WireModel, canonical_json
from schemas.ids import Sha256Hex
from schemas.keychain import MAX_CHAIN_LENGTH, RotationStatement
from schemas.topics import validate_device_id

__all__ = ["Manifest", "ManifestError", "SignedManifest", "canonical_json"]

_B64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=1 << 20)]
#: A desired-state message larger than this is refused before parsing.
MAX_SIGNED_MANIFEST_BYTES = 64 * 1024


class ManifestError(ValueError):
    """A manifest that cannot be accepted; the message says why."""

    def __init__(self, reason: str, *, bad_signature: bool = False) -> None:
        self.reason = reason
        #: True when the signature does not verify (as opposed to a malformed message).
        self.bad_signature = bad_signature
        super().__init__(f"manifest refused: {reason}")


class Manifest(WireModel):
    """The desired state of one device."""

    schema_version: Literal[1] = 1
    device_id: str
    deployment_id: str
    model: str
    version: str
    #: Per-model sequence number that only grows, rollbacks included (anti-replay): the
    #: device refuses a sequence below the highest it accepted for this model.
    sequence: Annotated[int, Field(ge=0)]
    #: Installs an older version on purpose; the device may reuse its kept previous model.
    rollback: bool = False
    issued_at: int
    expires_at: int
    #: The artifact's id: the SHA-256 of its plaintext (also checked after transfer).
    artifact_id: Sha256Hex
    size: Annotated[int, Field(ge=0)]
    chunk_size: Annotated[int, Field(gt=0)]
    chunk_count: Annotated[int, Field(gt=0)]
    encrypted: bool = True
    #: STREAM nonce prefix (7 bytes, base64) when encrypted.
    nonce_prefix: _B64 | None = None
    #: The data key sealed to this device with HPKE (base64) when encrypted.
    sealed_key: _B64 | None = None
    hpke_suite: str = crypto.HPKE_SUITE_NAME
    #: The platform will also publish the chunks once on ``artifacts/{id}/chunks`` for a
    #: whole wave: the device listens there first and pulls only what it still lacks.
    broadcast: bool = False

    @field_validator("device_id")
    @classmethod
    def _device(cls, value: str) -> str:
        return validate_device_id(value)

    def check_consistent(self) -> None:
        """Fields that must agree with each other; raises ``ManifestError``."""
        if self.chunk_count != crypto.chunk_count(self.size, self.chunk_size):
            raise ManifestError("chunk_count does not match size and chunk_size")
        if self.expires_at <= self.issued_at:
            raise ManifestError("expires_at is not after issued_at")
        if self.encrypted and (self.nonce_prefix is None or self.sealed_key is None):
            raise ManifestError("an encrypted manifest needs nonce_prefix and sealed_key")
        if self.encrypted:
            try:
                prefix = base64.b64decode(self.nonce_prefix or "", validate=True)
            except ValueError:  # the pattern admits strings of a wrong length
                raise ManifestError("nonce_prefix is not valid base64") from None
            if len(prefix) != crypto.NONCE_PREFIX_LEN:
                raise ManifestError("nonce_prefix has the wrong length")

    def sign(
        self, key: Ed25519PrivateKey, chain: tuple[RotationStatement, ...] = ()
    ) -> SignedManifest:
        """Sign with ``key``; ``chain``: the statements that lead to ``key`` (if rotated)."""
        body = canonical_json(self.model_dump(mode="json"))
        return SignedManifest(
            signed=base64.b64encode(body).decode(),
            signature=base64.b64encode(crypto.sign(key, body)).decode(),
            key_id=crypto.key_id(key.public_key()),
            key_chain=chain,
        )


class SignedManifest(WireModel):
    """The payload of the ``desired`` topic."""

    signed: _B64
    signature: _B64
    key_id: str = ""
    #: Every rotation of the platform's signing key, oldest first (``schemas.keychain``):
    #: a device that trusts an older key follows it to the signing key before it checks
    #: the signature. Left out of the payload while the key was never rotated.
    key_chain: tuple[RotationStatement, ...] = Field(default=(), max_length=MAX_CHAIN_LENGTH)

    def to_bytes(self) -> bytes:
        exclude = None if self.key_chain else {"key_chain"}
        return self.model_dump_json(exclude=exclude).encode()

    @classmethod
    def from_bytes(cls, payload: bytes) -> SignedManifest:
        if len(payload) > MAX_SIGNED_MANIFEST_BYTES:
            raise ManifestError(f"payload of {len(payload)} bytes is larger than allowed")
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            raise ManifestError(f"malformed signed manifest: {exc.errors()[0]['msg']}") from None

    def verify(self, key: Ed25519PublicKey) -> Manifest:
        """Check the signature over the exact signed bytes, then parse them."""
        try:
            body = base64.b64decode(self.signed, validate=True)
            signature = base64.b64decode(self.signature, validate=True)
        except ValueError:
            raise ManifestError("signed body or signature is not base64") from None
        try:
            crypto.verify(key, body, signature, what="manifest")
        except crypto.SignatureError as exc:
            raise ManifestError(str(exc), bad_signature=True) from None
        try:
            manifest = Manifest.model_validate_json(body)
        except ValidationError as exc:
            raise ManifestError(f"malformed manifest body: {exc.errors()[0]['msg']}") from None
        manifest.check_consistent()
        return manifest

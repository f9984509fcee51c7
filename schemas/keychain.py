"""Rotation of the platform's signing key, the way TUF rotates its root.

A ``KeyRotation`` names the new Ed25519 key (its raw public key and id), its version (the
key a device pinned at enrolment before any rotation is version 0; each rotation adds 1)
and the key it replaces. The ``RotationStatement`` carries its canonical JSON signed by
**both** the previous key and the new one: the previous key vouches for its successor, and
the new key proves it is held by whoever made the statement. A device trusts one key at a
time and moves on only through statements that verify against the key it trusts, in
order, one version at a time (``follow_chain``); a device that missed several rotations
walks the whole chain. The chain travels with every signed manifest (see
``docs/device-protocol.md``).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import Field, ValidationError

from schemas import crypto
from schemas.base import WireModel, canonical_json

__all__ = [
    "MAX_CHAIN_LENGTH",
    "KeyChainError",
    "KeyRotation",
    "RotationStatement",
    "TrustedKey",
    "follow_chain",
    "public_key_b64",
]

_B64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=256)]
_KEY_ID = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
#: Statements a manifest may carry; a device refuses a longer chain.
MAX_CHAIN_LENGTH = 64


class KeyChainError(ValueError):
    """A rotation statement or chain that cannot be accepted; the message says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"key rotation refused: {reason}")


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _public_key(b64: str, what: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except ValueError:
        raise KeyChainError(f"{what} is not an Ed25519 public key") from None


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """The platform key a device trusts now, and its version (0: the enrolment key of a
    platform never rotated; ``None``: pinned at enrolment, version not yet learnt)."""

    public_key: Ed25519PublicKey
    version: int | None = 0

    @property
    def key_id(self) -> str:
        return crypto.key_id(self.public_key)


class KeyRotation(WireModel):
    """The signed body of a rotation statement."""

    schema_version: Literal[1] = 1
    #: The new key's version: the previous key's version + 1.
    version: Annotated[int, Field(ge=1)]
    previous_key_id: _KEY_ID
    previous_public_key: _B64
    new_key_id: _KEY_ID
    new_public_key: _B64
    issued_at: int

    @classmethod
    def between(
        cls, previous: Ed25519PublicKey, new: Ed25519PublicKey, *, version: int, issued_at: int
    ) -> KeyRotation:
        return cls(
            version=version,
            previous_key_id=crypto.key_id(previous),
            previous_public_key=public_key_b64(previous),
            new_key_id=crypto.key_id(new),
            new_public_key=public_key_b64(new),
            issued_at=issued_at,
        )

    def sign(self, previous: Ed25519PrivateKey, new: Ed25519PrivateKey) -> RotationStatement:
        body = canonical_json(self.model_dump(mode="json"))
        ctx = crypto.KEY_ROTATION_SIGNATURE_CONTEXT
        return RotationStatement(
            signed=base64.b64encode(body).decode(),
            previous_signature=base64.b64encode(crypto.sign(previous, body, context=ctx)).decode(),
            new_signature=base64.b64encode(crypto.sign(new, body, context=ctx)).decode(),
        )


class RotationStatement(WireModel):
    """A ``KeyRotation`` (canonical JSON, base64) with the previous and the new key's
    Ed25519 signatures over it (context ``EdgeAIForge key rotation v1\\0``)."""

    signed: Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=4096)]
    previous_signature: _B64 = ""
    new_signature: _B64 = ""

    def body(self) -> KeyRotation:
        """The statement's claims, unverified (to see which key it is about)."""
        try:
            return KeyRotation.model_validate_json(base64.b64decode(self.signed, validate=True))
        except (ValueError, ValidationError) as exc:
            raise KeyChainError(f"malformed rotation statement: {exc}") from None

    def verify(self, trusted: TrustedKey) -> TrustedKey:
        """The key that replaces ``trusted``, if this statement is valid for it.

        Checks: the statement names ``trusted`` as the previous key (id and bytes); its
        version is the next one; the new key matches its id; both signatures verify.
        """
        rotation = self.body()
        if rotation.previous_key_id != trusted.key_id:
            raise KeyChainError(
                f"statement replaces key {rotation.previous_key_id}, the trusted key is "
                f"{trusted.key_id}"
            )
        if _public_key(rotation.previous_public_key, "previous key") != trusted.public_key:
            raise KeyChainError("the statement's previous key is not the trusted key")
        if trusted.version is not None and rotation.version != trusted.version + 1:
            raise KeyChainError(
                f"version {rotation.version} does not follow the trusted key's version "
                f"{trusted.version}"
            )
        new = _public_key(rotation.new_public_key, "new key")
        if crypto.key_id(new) != rotation.new_key_id:
            raise KeyChainError("the new key does not match its key id")
        body = base64.b64decode(self.signed)
        for key, signature, who in (
            (trusted.public_key, self.previous_signature, "previous"),
            (new, self.new_signature, "new"),
        ):
            if not signature:
                raise KeyChainError(f"the {who} key's signature is missing")
            try:
                crypto.verify(
                    key,
                    body,
                    base64.b64decode(signature, validate=True),
                    what="rotation statement",
                    context=crypto.KEY_ROTATION_SIGNATURE_CONTEXT,
                )
            except (ValueError, crypto.SignatureError):
                raise KeyChainError(f"the {who} key's signature does not verify") from None
        return TrustedKey(public_key=new, version=rotation.version)


def follow_chain(
    trusted: TrustedKey, chain: Sequence[RotationStatement]
) -> tuple[TrustedKey, list[RotationStatement]]:
    """Walk ``chain`` from ``trusted``: returns the newest trusted key and the statements
    applied, in order. Statements up to the trusted key are passed over (they cannot move
    trust: every one after it must be signed by the key trusted at that step). A chain
    that does not reach the trusted key is refused, as is any invalid statement after it.
    """
    if len(chain) > MAX_CHAIN_LENGTH:
        raise KeyChainError(f"a chain of {len(chain)} statements is longer than allowed")
    bodies = [s.body() for s in chain]
    start: int | None = None
    for i, rotation in enumerate(bodies):
        if rotation.new_key_id == trusted.key_id:
            start = i + 1
            if trusted.version is None:
                trusted = TrustedKey(trusted.public_key, rotation.version)
    if start is None:
        if not bodies or bodies[0].previous_key_id == trusted.key_id:
            # No statement leads to the trusted key: it is the first key, version 0.
            start = 0
            trusted = TrustedKey(trusted.public_key, 0)
        else:
            raise KeyChainError(f"the chain does not lead from the trusted key {trusted.key_id}")
    applied = []
    for statement in chain[start:]:
        trusted = statement.verify(trusted)
        applied.append(statement)
    return trusted, applied

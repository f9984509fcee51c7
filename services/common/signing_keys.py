"""The platform signing key's rotation chain: loaded and checked at start, extended by a
rotation (``python -m services.deployer rotate-signing-key``).

The chain file (``security.signing_chain_path``) is ``{"statements": [...]}``, oldest
first; each statement is signed by the key it retires and by its successor
(``schemas.keychain``). A rotation is crash-safe and resumable:

1. the new key is written to ``<signing_key_path>.next`` (kept if it is already there);
2. the statement is appended to the chain file (unless it is already its last);
3. the current key is kept as ``<signing_key_path>.retired-<key id>`` and the new one
   takes its place.

Interrupted anywhere, running it again finishes the same rotation.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from modelkit.durable import atomic_write
from schemas import crypto
from schemas.config import SecurityConfig
from schemas.keychain import KeyChainError, KeyRotation, RotationStatement, TrustedKey
from services.common.keys import (
    KeyFileError,
    load_signing_key,
    signing_key_from_pem,
    write_secret_file,
)

__all__ = ["SigningRotation", "load_signing_chain", "rotate_signing_key"]


@dataclass(frozen=True, slots=True)
class SigningRotation:
    previous_key_id: str
    new_key_id: str
    version: int
    #: Where the retired private key was kept (move it offline, or destroy it).
    retired_path: Path


def _read_chain(path: Path) -> tuple[RotationStatement, ...]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as exc:
        raise KeyFileError(
            path, "signing_chain_path", f"chain file cannot be read ({exc})"
        ) from None
    try:
        return tuple(RotationStatement.model_validate(s) for s in data["statements"])
    except (KeyError, TypeError, ValidationError) as exc:
        raise KeyFileError(path, "signing_chain_path", f"not a rotation chain ({exc})") from None


def _check_chain(chain: tuple[RotationStatement, ...], path: Path) -> TrustedKey | None:
    """The key the chain leads to (``None`` for an empty chain), every statement checked."""
    if not chain:
        return None
    first = chain[0].body()
    try:
        raw = base64.b64decode(first.previous_public_key)
        trusted = TrustedKey(Ed25519PublicKey.from_public_bytes(raw), 0)
        for statement in chain:
            trusted = statement.verify(trusted)
    except (KeyChainError, ValueError) as exc:
        raise KeyFileError(path, "signing_chain_path", str(exc)) from None
    return trusted


def load_signing_chain(
    config: SecurityConfig, signing_key: Ed25519PrivateKey
) -> tuple[RotationStatement, ...]:
    """The rotation statements that lead to ``signing_key``; refuses a chain that is
    invalid or ends at another key (a rotation that was not finished)."""
    path = config.signing_chain_path
    chain = _read_chain(path)
    last = _check_chain(chain, path)
    if last is not None and last.key_id != crypto.key_id(signing_key.public_key()):
        raise KeyFileError(
            path,
            "signing_chain_path",
            f"the chain leads to key {last.key_id} but security.signing_key_path holds key "
            f"{crypto.key_id(signing_key.public_key())}: finish the rotation with "
            "`python -m services.deployer rotate-signing-key`",
        )
    return chain


def rotate_signing_key(config: SecurityConfig, *, now: int | None = None) -> SigningRotation:
    """Replace the signing key by a new one, with its statement; see the module text."""
    key_path = config.signing_key_path
    next_path = key_path.with_name(key_path.name + ".next")
    current = load_signing_key(config)
    chain = _read_chain(config.signing_chain_path)
    last = _check_chain(chain, config.signing_chain_path)
    if next_path.exists():
        new = signing_key_from_pem(next_path.read_bytes(), next_path)
    else:
        new = Ed25519PrivateKey.generate()
        write_secret_file(next_path, _pem(new))
    new_id = crypto.key_id(new.public_key())
    current_id = crypto.key_id(current.public_key())
    if last is not None and last.key_id == new_id:
        # Step 2 is done already: the statement leads from ``previous`` to ``new``.
        version = last.version or 0
        previous_id = chain[-1].body().previous_key_id
    else:
        if last is not None and last.key_id != current_id:
            raise KeyFileError(
                config.signing_chain_path,
                "signing_chain_path",
                f"the chain leads to key {last.key_id}, not to the signing key {current_id}",
            )
        version = (last.version or 0) + 1 if last is not None else 1
        statement = KeyRotation.between(
            current.public_key(),
            new.public_key(),
            version=version,
            issued_at=int(time.time()) if now is None else now,
        ).sign(current, new)
        body = {"statements": [s.model_dump() for s in (*chain, statement)]}
        atomic_write(config.signing_chain_path, json.dumps(body, indent=2).encode())
        previous_id = current_id
    retired = key_path.with_name(f"{key_path.name}.retired-{previous_id}")
    if previous_id == current_id:
        write_secret_file(retired, _pem(current))
        write_secret_file(key_path, _pem(new))
    next_path.unlink(missing_ok=True)
    return SigningRotation(
        previous_key_id=previous_id, new_key_id=new_id, version=version, retired_path=retired
    )


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

"""The device's manifest checks, in order, each with its reason code."""

from __future__ import annotations

import base64
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime._transfer import check_manifest
from edge_runtime.errors import TransferRefused
from schemas.manifest import Manifest
from schemas.transfer import RejectionCode

KEY = Ed25519PrivateKey.generate()


def manifest(**kw: object) -> Manifest:
    now = int(time.time())
    fields: dict[str, object] = {
        "device_id": "dev-1", "deployment_id": "d1", "model": "m", "version": "1.0.0",
        "sequence": 5, "issued_at": now, "expires_at": now + 60, "artifact_id": "ab" * 32,
        "size": 10, "chunk_size": 4096, "chunk_count": 1,
        "nonce_prefix": base64.b64encode(b"1234567").decode(),
        "sealed_key": base64.b64encode(b"x" * 40).decode(),
    }  # fmt: skip
    fields.update(kw)
    return Manifest.model_validate(fields)


def check(payload: bytes, sequences: dict[str, int] | None = None) -> Manifest:
    return check_manifest(
        payload, device_id="dev-1", platform_key=KEY.public_key(), sequences=sequences or {}
    )


def code_of(payload: bytes, sequences: dict[str, int] | None = None) -> RejectionCode:
    with pytest.raises(TransferRefused) as caught:
        check(payload, sequences)
    return caught.value.code


def test_a_good_manifest_passes() -> None:
    assert check(manifest().sign(KEY).to_bytes(), {"m": 5}).sequence == 5


def test_each_refusal_has_its_code() -> None:
    other = Ed25519PrivateKey.generate()
    assert code_of(b"not json") is RejectionCode.MALFORMED
    assert code_of(manifest().sign(other).to_bytes()) is RejectionCode.SIGNATURE
    assert code_of(manifest(device_id="dev-2").sign(KEY).to_bytes()) is RejectionCode.WRONG_DEVICE
    expired = manifest(issued_at=1, expires_at=2).sign(KEY).to_bytes()
    assert code_of(expired) is RejectionCode.EXPIRED
    assert code_of(manifest(sequence=4).sign(KEY).to_bytes(), {"m": 5}) is RejectionCode.REPLAY


def test_a_tampered_body_fails_the_signature() -> None:
    signed = manifest().sign(KEY)
    body = base64.b64decode(signed.signed).replace(b'"sequence":5', b'"sequence":9')
    forged = signed.model_copy(update={"signed": base64.b64encode(body).decode()})
    assert code_of(forged.to_bytes()) is RejectionCode.SIGNATURE

"""The wire format's cryptography: STREAM chunks, key wrap, HPKE, signed manifests."""

import base64
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas import crypto
from schemas.manifest import Manifest, ManifestError, SignedManifest

SHA = "cd" * 32


def test_stream_chunks_bind_index_and_last_flag() -> None:
    dek, prefix = crypto.new_dek(), crypto.new_nonce_prefix()
    c0 = crypto.seal_chunk(dek, prefix, 0, False, b"first")
    c1 = crypto.seal_chunk(dek, prefix, 1, True, b"second")
    assert crypto.open_chunk(dek, prefix, 0, False, c0) == b"first"
    assert crypto.open_chunk(dek, prefix, 1, True, c1) == b"second"
    with pytest.raises(crypto.ChunkIntegrityError):  # reordered
        crypto.open_chunk(dek, prefix, 0, False, c1)
    with pytest.raises(crypto.ChunkIntegrityError):  # truncated: chunk 0 presented as last
        crypto.open_chunk(dek, prefix, 0, True, c0)
    flipped = bytes([c0[0] ^ 1]) + c0[1:]
    with pytest.raises(crypto.ChunkIntegrityError):
        crypto.open_chunk(dek, prefix, 0, False, flipped)


def test_key_wrap_round_trip_and_wrong_kek() -> None:
    kek, dek = crypto.new_dek(), crypto.new_dek()
    wrapped = crypto.wrap_dek(kek, dek)
    assert crypto.unwrap_dek(kek, wrapped) == dek
    with pytest.raises(crypto.KeyUnwrapError):
        crypto.unwrap_dek(crypto.new_dek(), wrapped)


def test_hpke_sealed_key_opens_only_for_its_device_and_artifact() -> None:
    device = X25519PrivateKey.generate()
    other = X25519PrivateKey.generate()
    public = device.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    dek = crypto.new_dek()
    sealed = crypto.seal_dek(dek, public, device_id="d1", artifact_id=SHA)
    assert crypto.open_dek(sealed, device, device_id="d1", artifact_id=SHA) == dek
    with pytest.raises(crypto.SealedKeyError):
        crypto.open_dek(sealed, other, device_id="d1", artifact_id=SHA)
    with pytest.raises(crypto.SealedKeyError):
        crypto.open_dek(sealed, device, device_id="d2", artifact_id=SHA)


def _manifest(**overrides: object) -> Manifest:
    now = int(time.time())
    fields: dict[str, object] = {
        "device_id": "d1",
        "deployment_id": "dep-1",
        "model": "m",
        "version": "1.0.0",
        "sequence": 3,
        "issued_at": now,
        "expires_at": now + 60,
        "artifact_id": SHA,
        "size": 1000,
        "chunk_size": 256,
        "chunk_count": 4,
        "nonce_prefix": base64.b64encode(b"1234567").decode(),
        "sealed_key": base64.b64encode(b"k" * 80).decode(),
    }
    fields.update(overrides)
    return Manifest.model_validate(fields)


def test_signed_manifest_verifies_with_the_platform_key_only() -> None:
    key = Ed25519PrivateKey.generate()
    signed = _manifest().sign(key)
    wire = signed.to_bytes()
    parsed = SignedManifest.from_bytes(wire).verify(key.public_key())
    assert (parsed.device_id, parsed.sequence, parsed.artifact_id) == ("d1", 3, SHA)
    with pytest.raises(ManifestError, match="signature"):
        SignedManifest.from_bytes(wire).verify(Ed25519PrivateKey.generate().public_key())


def test_tampered_signed_body_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    signed = _manifest().sign(key)
    body = base64.b64decode(signed.signed).replace(b'"sequence":3', b'"sequence":9')
    forged = SignedManifest(
        signed=base64.b64encode(body).decode(), signature=signed.signature, key_id=signed.key_id
    )
    with pytest.raises(ManifestError, match="signature"):
        forged.verify(key.public_key())


def test_inconsistent_manifest_is_refused_after_signature() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ManifestError, match="chunk_count"):
        _manifest(chunk_count=5).sign(key).verify(key.public_key())


@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b'{"signed": 1}', b"x" * 70_000])
def test_malformed_signed_manifest_is_refused(payload: bytes) -> None:
    with pytest.raises(ManifestError):
        SignedManifest.from_bytes(payload)

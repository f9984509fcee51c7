"""What a KEK file may hold: 32 raw bytes, a PEM ``EDGEAIFORGE KEK`` block, or a PEM private
key the KEK is derived from; anything else stops the service with the reason."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from schemas.config import SecurityConfig
from services.common.keys import KeyFileError, kek_pem, load_kek


def security(tmp_path: Path, kek_file: Path, **kw: object) -> SecurityConfig:
    return SecurityConfig.model_validate(
        {"encryption_key_path": kek_file, "signing_key_path": tmp_path / "s.pem", **kw}
    )


def load(tmp_path: Path, data: bytes, name: str = "kek.pem") -> bytes:
    path = tmp_path / name
    path.write_bytes(data)
    ring = load_kek(security(tmp_path, path))
    assert ring is not None
    return ring.active


def pem(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey, **kw: object) -> bytes:
    encryption = kw.get("encryption", serialization.NoEncryption())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption,  # type: ignore[arg-type]
    )


def test_raw_32_bytes_are_the_kek(tmp_path: Path) -> None:
    raw = os.urandom(32)
    assert load(tmp_path, raw, "kek.key") == raw


def test_a_pem_kek_block_holds_the_raw_key(tmp_path: Path) -> None:
    raw = os.urandom(32)
    assert load(tmp_path, kek_pem(raw)) == raw


@pytest.mark.parametrize(
    "make", [ed25519.Ed25519PrivateKey.generate, lambda: ec.generate_private_key(ec.SECP256R1())]
)
def test_a_pem_private_key_derives_a_stable_kek(tmp_path: Path, make) -> None:
    key = make()
    first = load(tmp_path, pem(key))
    assert len(first) == 32
    assert load(tmp_path, pem(key), "again.pem") == first
    assert load(tmp_path, pem(make()), "other.pem") != first
    # The KEK is not the private key's bytes themselves.
    assert first not in pem(key)


def cert_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"short", "exactly 32 raw bytes or PEM, found 5 bytes"),
        (os.urandom(32).hex().encode() + b"\n", "looks like hex"),
        (kek_pem(os.urandom(16)), "EDGEAIFORGE KEK block holds 16 bytes, not 32"),
        (kek_pem(os.urandom(32)) * 2, "one PEM block, found 2"),
        (cert_pem(), "'CERTIFICATE' block is not a key-encryption key"),
        (
            ed25519.Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "'PUBLIC KEY' block is not a key-encryption key",
        ),
        (
            pem(
                ed25519.Ed25519PrivateKey.generate(),
                encryption=serialization.BestAvailableEncryption(b"pw"),
            ),
            "'ENCRYPTED PRIVATE KEY' block is not a key-encryption key",
        ),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "cannot be read"),
    ],
)
def test_anything_else_is_refused_with_the_reason(tmp_path: Path, data: bytes, says: str) -> None:
    with pytest.raises(KeyFileError, match=says) as info:
        load(tmp_path, data)
    assert "encryption_key_path" in str(info.value)


@pytest.mark.parametrize("name", ["kek.key", "kek.pem"])
def test_dev_mode_makes_a_key_in_the_form_the_name_says(tmp_path: Path, name: str) -> None:
    path = tmp_path / "keys" / name
    ring = load_kek(security(tmp_path, path, dev_mode=True))
    assert ring is not None
    written = path.read_bytes()
    if name.endswith(".pem"):
        assert written.startswith(b"-----BEGIN EDGEAIFORGE KEK-----")
        body = b"".join(written.splitlines()[1:-1])
        assert base64.b64decode(body) == ring.active
    else:
        assert written == ring.active
    assert path.stat().st_mode & 0o777 == 0o600
    # Loaded again, the same key.
    again = load_kek(security(tmp_path, path, dev_mode=True))
    assert again is not None and again.active == ring.active


def test_previous_keys_join_the_keyring(tmp_path: Path) -> None:
    old = tmp_path / "old.key"
    old.write_bytes(os.urandom(32))
    current = tmp_path / "new.pem"
    current.write_bytes(kek_pem(os.urandom(32)))
    ring = load_kek(security(tmp_path, current, previous_encryption_key_paths=[old]))
    assert ring is not None
    assert len(ring.ids()) == 2 and ring.ids()[0] == ring.active_id
    missing = tmp_path / "gone.key"
    with pytest.raises(KeyFileError, match="previous_encryption_key_paths"):
        load_kek(security(tmp_path, current, previous_encryption_key_paths=[missing]))

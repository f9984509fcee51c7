"""Rotation of the platform's signing key: statements signed by both keys, followed one
version at a time; the chain the deployer loads; the rotate command, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime._transfer import check_manifest, follow_key_chain
from edge_runtime.errors import TransferRefused
from schemas import crypto
from schemas.config import SecurityConfig
from schemas.keychain import KeyChainError, KeyRotation, RotationStatement, TrustedKey, follow_chain
from schemas.transfer import RejectionCode
from services.common.keys import KeyFileError, load_signing_key
from services.common.signing_keys import load_signing_chain, rotate_signing_key
from tests.unit.test_edge_manifest import manifest as manifest_for_test


def rotation(prev: Ed25519PrivateKey, new: Ed25519PrivateKey, version: int) -> RotationStatement:
    body = KeyRotation.between(prev.public_key(), new.public_key(), version=version, issued_at=1)
    return body.sign(prev, new)


@pytest.fixture
def keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(4)]


def test_a_device_two_rotations_behind_walks_the_chain(keys) -> None:
    chain = [rotation(keys[0], keys[1], 1), rotation(keys[1], keys[2], 2)]
    trusted, applied = follow_chain(TrustedKey(keys[0].public_key(), None), chain)
    assert trusted.key_id == crypto.key_id(keys[2].public_key())
    assert trusted.version == 2 and applied == chain
    # One rotation behind: only the last statement moves it.
    trusted, applied = follow_chain(TrustedKey(keys[1].public_key(), 1), chain)
    assert trusted.version == 2 and applied == chain[1:]
    # Up to date: nothing moves.
    assert follow_chain(TrustedKey(keys[2].public_key(), 2), chain)[1] == []


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (
            lambda k: rotation(k[0], k[1], 1).model_copy(update={"previous_signature": ""}),
            "previous key's signature is missing",
        ),
        (
            lambda k: rotation(k[0], k[1], 1).model_copy(update={"new_signature": ""}),
            "new key's signature is missing",
        ),
        (
            lambda k: rotation(k[0], k[1], 1).model_copy(
                update={"new_signature": rotation(k[0], k[3], 1).new_signature}
            ),
            "new key's signature does not verify",
        ),
        (lambda k: rotation(k[3], k[1], 1), "the chain does not lead from the trusted key"),
        (
            lambda k: rotation(k[0], k[1], 2),
            "version 2 does not follow the trusted key's version 0",
        ),
    ],
)
def test_an_invalid_statement_moves_nothing(keys, make, says) -> None:
    with pytest.raises(KeyChainError, match=says):
        follow_chain(TrustedKey(keys[0].public_key(), 0), [make(keys)])


def test_a_forged_statement_after_the_trusted_key_is_refused(keys) -> None:
    # Someone with only the new key cannot extend the chain on behalf of the old one.
    forged = KeyRotation.between(
        keys[1].public_key(), keys[2].public_key(), version=2, issued_at=1
    ).sign(keys[3], keys[2])
    with pytest.raises(KeyChainError, match="previous key's signature does not verify"):
        follow_chain(TrustedKey(keys[0].public_key(), 0), [rotation(keys[0], keys[1], 1), forged])


def test_the_device_follows_then_refuses_the_retired_key(keys, tmp_path: Path) -> None:
    chain = (rotation(keys[0], keys[1], 1),)
    manifest = manifest_for_test()
    by_new = manifest.sign(keys[1], chain).to_bytes()
    by_old = manifest.sign(keys[0]).to_bytes()
    trusted, applied = follow_key_chain(by_new, TrustedKey(keys[0].public_key(), None))
    assert applied == list(chain)
    check_manifest(by_new, device_id="dev-1", platform_key=trusted.public_key, sequences={})
    retired = frozenset({crypto.key_id(keys[0].public_key())})
    with pytest.raises(TransferRefused, match="retired platform key") as info:
        check_manifest(
            by_old,
            device_id="dev-1",
            platform_key=trusted.public_key,
            sequences={},
            retired=retired,
        )
    assert info.value.code is RejectionCode.SIGNATURE
    # A manifest signed with the new key but without a chain is refused by an old device.
    with pytest.raises(TransferRefused, match="signature"):
        check_manifest(
            manifest.sign(keys[1]).to_bytes(),
            device_id="dev-1",
            platform_key=keys[0].public_key(),
            sequences={},
        )


def security(tmp_path: Path) -> SecurityConfig:
    return SecurityConfig(
        signing_key_path=tmp_path / "keys" / "signing.pem",
        signing_chain_path=tmp_path / "keys" / "chain.json",
        encryption_key_path=tmp_path / "keys" / "kek.key",
        dev_mode=True,
    )


def test_rotate_signing_key_twice_and_the_deployer_loads_the_chain(tmp_path: Path) -> None:
    config = security(tmp_path)
    first = load_signing_key(config)
    assert load_signing_chain(config, first) == ()
    one = rotate_signing_key(config)
    two = rotate_signing_key(config)
    assert (one.version, two.version) == (1, 2)
    assert one.previous_key_id == crypto.key_id(first.public_key())
    current = load_signing_key(config)
    assert two.new_key_id == crypto.key_id(current.public_key())
    chain = load_signing_chain(config, current)
    trusted, _ = follow_chain(TrustedKey(first.public_key(), 0), chain)
    assert trusted.key_id == two.new_key_id and trusted.version == 2
    assert one.retired_path.exists() and one.retired_path.stat().st_mode & 0o777 == 0o600
    # A deployer still holding a retired key refuses to start.
    with pytest.raises(KeyFileError, match="finish the rotation"):
        load_signing_chain(config, first)


def test_an_interrupted_signing_rotation_is_finished_by_the_next(tmp_path: Path) -> None:
    config = security(tmp_path)
    first = load_signing_key(config)
    done = rotate_signing_key(config)
    # Put the files back as a run cut off after writing the statement leaves them: the
    # new key still waiting as .next, the old one still in signing_key_path.
    new_pem = config.signing_key_path.read_bytes()
    config.signing_key_path.with_name("signing.pem.next").write_bytes(new_pem)
    config.signing_key_path.write_bytes(done.retired_path.read_bytes())
    with pytest.raises(KeyFileError, match="finish the rotation"):
        load_signing_chain(config, load_signing_key(config))

    again = rotate_signing_key(config)
    assert (again.version, again.new_key_id) == (1, done.new_key_id)
    assert again.previous_key_id == crypto.key_id(first.public_key())
    current = load_signing_key(config)
    assert crypto.key_id(current.public_key()) == done.new_key_id
    assert len(load_signing_chain(config, current)) == 1
    assert not config.signing_key_path.with_name("signing.pem.next").exists()
    assert len(json.loads(config.signing_chain_path.read_text())["statements"]) == 1

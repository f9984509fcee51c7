"""The edge runtime's own verification and transfer code against every test vector in
``tests/vectors/v1`` (good and broken): another implementation checks itself against the
same files."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_runtime._state import StateDir
from edge_runtime._transfer import (
    ChunkOutcome,
    Transfer,
    check_manifest,
    follow_key_chain,
    open_manifest_key,
)
from edge_runtime.errors import TransferRefused
from schemas import crypto
from schemas.keychain import KeyChainError, RotationStatement, TrustedKey
from schemas.manifest import Manifest, canonical_json

V1 = Path(__file__).resolve().parents[1] / "vectors" / "v1"
VECTORS: dict[str, Any] = json.loads((V1 / "vectors.json").read_text())
KEYS = VECTORS["keys"]
PLATFORM = Ed25519PublicKey.from_public_bytes(base64.b64decode(KEYS["platform_public_key"]))
DEVICE = X25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS["device_private_key"]))


def cases(kind: str) -> list[Any]:
    return [pytest.param(c, id=c["name"]) for c in VECTORS["cases"] if c["kind"] == kind]


def read(name: str) -> bytes:
    return (V1 / name).read_bytes()


def receive_manifest(case: dict[str, Any]) -> Manifest:
    """What the runtime does with a ``desired`` payload: follow the key chain it carries,
    check it, open the data key. ``followed``: statements the device followed before."""
    trusted = TrustedKey(PLATFORM, 0)
    retired: set[str] = set()
    for name in case.get("followed", []):
        statement = RotationStatement.model_validate_json(read(name))
        retired.add(trusted.key_id)
        trusted = statement.verify(trusted)
    payload = read(case["desired"])
    moved, applied = follow_key_chain(payload, trusted)
    retired |= {s.body().previous_key_id for s in applied}
    manifest = check_manifest(
        payload,
        device_id=KEYS["device_id"],
        platform_key=moved.public_key,
        sequences=dict(case.get("sequences", {})),
        retired=frozenset(retired),
    )
    open_manifest_key(manifest, DEVICE)
    return manifest


def start_transfer(tmp_path: Path, desired: str) -> Transfer:
    payload = read(desired)
    manifest = receive_manifest({"desired": desired})
    dek = open_manifest_key(manifest, DEVICE)
    return Transfer(StateDir(tmp_path), manifest, payload, dek)


def test_the_vectors_cover_every_refusal_a_transfer_can_meet() -> None:
    expected = {c["expect"] for c in VECTORS["cases"]}
    assert expected >= {
        "accept", "malformed", "signature", "wrong_device", "expired", "clock_skew", "replay",
        "sealed_key", "chunk_integrity", "chunk_size", "foreign_chunk", "digest_mismatch",
    }  # fmt: skip


def test_the_keys_and_the_good_manifest_agree_with_the_files() -> None:
    platform = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS["platform_signing_seed"]))
    assert crypto.key_id(platform.public_key()) == KEYS["platform_key_id"]
    body = read("manifest-body.json")
    crypto.verify(PLATFORM, body, read("manifest-signature.bin"), what="vector")
    manifest = Manifest.model_validate_json(body)
    assert canonical_json(json.loads(body)) == body
    assert manifest.artifact_id == hashlib.sha256(read("plaintext.bin")).hexdigest()
    assert manifest.artifact_id == read("plaintext.sha256").decode().strip()
    assert json.loads(read("desired/good.json"))["signed"] == base64.b64encode(body).decode()


@pytest.mark.parametrize("case", cases("manifest"))
def test_manifest(case: dict[str, Any]) -> None:
    if case["expect"] == "accept":
        assert receive_manifest(case).deployment_id
        return
    with pytest.raises(TransferRefused) as caught:
        receive_manifest(case)
    assert caught.value.code.value == case["expect"], caught.value


@pytest.mark.parametrize("case", cases("rotation"))
def test_rotation(case: dict[str, Any]) -> None:
    trusted = TrustedKey(
        Ed25519PublicKey.from_public_bytes(base64.b64decode(case["trusted_public_key"])),
        case["trusted_version"],
    )
    statement = RotationStatement.model_validate_json(read(case["statement"]))
    if case["expect"] == "accept":
        moved = statement.verify(trusted)
        assert moved.key_id == case["new_key_id"] == KEYS["rotated_key_id"]
        assert moved.version == trusted.version + 1  # type: ignore[operator]
        body = read("rotation/body.json")
        assert base64.b64decode(statement.signed) == body == canonical_json(json.loads(body))
        return
    with pytest.raises(KeyChainError):
        statement.verify(trusted)


@pytest.mark.parametrize("case", cases("chunk"))
def test_chunk(case: dict[str, Any], tmp_path: Path) -> None:
    transfer = start_transfer(tmp_path, case["desired"])
    try:
        outcome = transfer.accept(case["index"], case["artifact"], read(case["chunk"]))
    finally:
        transfer.close()
    assert outcome is ChunkOutcome.REFUSED
    assert transfer.last_refusal is not None
    assert transfer.last_refusal.code.value == case["expect"], transfer.last_refusal
    assert transfer.chunks_received == 0


@pytest.mark.parametrize("case", cases("transfer"))
async def test_transfer(case: dict[str, Any], tmp_path: Path) -> None:
    transfer = start_transfer(tmp_path, case["desired"])
    # In reverse order: chunks may arrive in any order.
    for index in reversed(range(len(case["chunks"]))):
        artifact = transfer.manifest.artifact_id
        assert transfer.accept(index, artifact, read(case["chunks"][index])) is ChunkOutcome.NEW
    if case["expect"] == "accept":
        path = await transfer.finish()
        assert path.read_bytes() == read(case["plaintext"])
        return
    with pytest.raises(TransferRefused) as caught:
        await transfer.finish()
    assert caught.value.code.value == case["expect"]


def test_a_chunk_refused_three_times_fails_the_transfer(tmp_path: Path) -> None:
    transfer = start_transfer(tmp_path, "desired/good.json")
    artifact = transfer.manifest.artifact_id
    bad = read("chunks/bad/1-bit-flipped.bin")
    try:
        assert transfer.accept(1, artifact, bad) is ChunkOutcome.REFUSED
        assert transfer.accept(1, artifact, bad) is ChunkOutcome.REFUSED
        with pytest.raises(TransferRefused) as caught:
            transfer.accept(1, artifact, bad)
    finally:
        transfer.close()
    assert caught.value.code.value == "chunk_integrity"

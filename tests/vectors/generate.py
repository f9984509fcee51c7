"""Write the device protocol's test vectors (``tests/vectors/v1/``): ``make vectors``.

Keys, the data key and the plaintext come from fixed seeds, so every run writes the same
keys, plaintext, chunks and manifests but one thing: HPKE picks a fresh ephemeral key for
each seal, so ``sealed_key`` (and with it each manifest's signature) changes. The committed
files are the reference; regenerate only when the protocol changes. What each file holds
and how to use it is in ``tests/vectors/v1/README.md`` and ``docs/device-protocol.md``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parents[1]))

from schemas import crypto  # noqa: E402 - after the path set-up for `python tests/vectors/...`
from schemas.keychain import KeyRotation  # noqa: E402
from schemas.manifest import Manifest, canonical_json  # noqa: E402

OUT = ROOT / "v1"
DEVICE_ID = "vector-device-1"
OTHER_DEVICE_ID = "vector-device-2"
MODEL, VERSION, SEQUENCE = "vector-model", "1.0.0", 10
CHUNK_SIZE = 1024
ISSUED_AT = 1767225600  # 2026-01-01T00:00:00Z
EXPIRES_AT = 4102444800  # 2100-01-01T00:00:00Z: the good manifests stay valid until then
DEPLOYMENT_ID = "00000000-0000-4000-8000-00000000000a"


def seed(label: str) -> bytes:
    return hashlib.sha256(f"EdgeAIForge test vectors v1: {label}".encode()).digest()


def raw_public(key: Any) -> bytes:
    raw: bytes = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return raw


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def model_bytes() -> bytes:
    """A small ONNX model (``y = x + b``, float32[1, 640]) that loads and runs on a device."""
    rng = np.random.default_rng(int.from_bytes(seed("model")[:8], "big"))
    width = 640
    bias = numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        "vector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        [bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


def main() -> None:
    platform = Ed25519PrivateKey.from_private_bytes(seed("platform signing key"))
    rotated = Ed25519PrivateKey.from_private_bytes(seed("rotated platform signing key"))
    attacker = Ed25519PrivateKey.from_private_bytes(seed("another signing key"))
    device = X25519PrivateKey.from_private_bytes(seed("device key"))
    dek = seed("data key")
    prefix = seed("nonce prefix")[: crypto.NONCE_PREFIX_LEN]
    plaintext = model_bytes()
    artifact_id = hashlib.sha256(plaintext).hexdigest()
    count = crypto.chunk_count(len(plaintext), CHUNK_SIZE)
    pieces = [plaintext[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE] for i in range(count)]
    chunks = [
        crypto.seal_chunk(dek, prefix, i, i == count - 1, piece) for i, piece in enumerate(pieces)
    ]

    readme = (OUT / "README.md").read_bytes() if (OUT / "README.md").exists() else None
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "chunks").mkdir(parents=True)
    (OUT / "desired").mkdir()
    files: dict[str, bytes] = {"plaintext.bin": plaintext}
    if readme is not None:  # written by hand, not generated
        files["README.md"] = readme
    files["plaintext.sha256"] = (artifact_id + "\n").encode()
    for i, chunk in enumerate(chunks):
        files[f"chunks/{i}.bin"] = chunk

    def sealed(device_id: str = DEVICE_ID, artifact: str = artifact_id) -> str:
        return b64(
            crypto.seal_dek(dek, raw_public(device), device_id=device_id, artifact_id=artifact)
        )

    good_fields: dict[str, Any] = {
        "device_id": DEVICE_ID,
        "deployment_id": DEPLOYMENT_ID,
        "model": MODEL,
        "version": VERSION,
        "sequence": SEQUENCE,
        "rollback": False,
        "issued_at": ISSUED_AT,
        "expires_at": EXPIRES_AT,
        "artifact_id": artifact_id,
        "size": len(plaintext),
        "chunk_size": CHUNK_SIZE,
        "chunk_count": count,
        "encrypted": True,
        "nonce_prefix": b64(prefix),
        "sealed_key": sealed(),
        "broadcast": False,
    }

    def signed(key: Ed25519PrivateKey = platform, **changes: Any) -> bytes:
        manifest = Manifest.model_validate({**good_fields, **changes})
        return manifest.sign(key).to_bytes()

    good = signed()
    good_body = canonical_json(Manifest.model_validate(good_fields).model_dump(mode="json"))
    files["desired/good.json"] = good
    files["manifest-body.json"] = good_body
    files["manifest-signature.bin"] = crypto.sign(platform, good_body)

    envelope = json.loads(good)
    tampered_body = good_body.replace(f'"sequence":{SEQUENCE}'.encode(), b'"sequence":99')
    assert tampered_body != good_body
    tampered = {**envelope, "signed": b64(tampered_body)}
    wrong_digest_id = hashlib.sha256(b"not the plaintext").hexdigest()
    manifests = {
        "desired/not-json.json": b'{"signed": "not a manifest',
        "desired/inconsistent.json": signed(chunk_count=count + 1),
        "desired/tampered-body.json": json.dumps(tampered).encode(),
        "desired/other-signer.json": signed(attacker),
        "desired/other-device.json": signed(
            device_id=OTHER_DEVICE_ID, sealed_key=sealed(OTHER_DEVICE_ID)
        ),
        "desired/expired.json": signed(expires_at=ISSUED_AT + 60),
        "desired/issued-in-the-future.json": signed(
            issued_at=EXPIRES_AT - 3600, expires_at=EXPIRES_AT
        ),
        "desired/replay.json": signed(sequence=SEQUENCE - 1),
        "desired/key-for-other-device.json": signed(sealed_key=sealed(OTHER_DEVICE_ID)),
        "desired/key-for-other-artifact.json": signed(sealed_key=sealed(artifact=wrong_digest_id)),
        "desired/wrong-digest.json": signed(
            artifact_id=wrong_digest_id, sealed_key=sealed(artifact=wrong_digest_id)
        ),
    }
    files.update(manifests)

    # Rotation of the platform key (version 0, pinned at enrolment) to ``rotated`` (1).
    rotation = KeyRotation.between(
        platform.public_key(), rotated.public_key(), version=1, issued_at=ISSUED_AT
    )
    statement = rotation.sign(platform, rotated)
    wrong_version = rotation.model_copy(update={"version": 2}).sign(platform, rotated)
    rotations = {
        "rotation/valid.json": statement,
        "rotation/missing-previous-signature.json": statement.model_copy(
            update={"previous_signature": ""}
        ),
        "rotation/missing-new-signature.json": statement.model_copy(update={"new_signature": ""}),
        "rotation/previous-signature-by-another-key.json": rotation.sign(attacker, rotated),
        "rotation/wrong-version.json": wrong_version,
    }
    for name, value in rotations.items():
        files[name] = (value.model_dump_json(indent=2) + "\n").encode()
    files["rotation/body.json"] = base64.b64decode(statement.signed)
    files["desired/rotated-key-with-chain.json"] = (
        Manifest.model_validate({**good_fields, "sequence": SEQUENCE + 1})
        .sign(rotated, (statement,))
        .to_bytes()
    )
    files["desired/by-retired-key.json"] = signed(sequence=SEQUENCE + 1)

    last = count - 1
    flipped = bytearray(chunks[1])
    flipped[5] ^= 0x01
    bad_chunks = {
        "chunks/bad/1-bit-flipped.bin": bytes(flipped),
        "chunks/bad/1-is-chunk-0.bin": chunks[0],
        f"chunks/bad/{last}-not-marked-last.bin": crypto.seal_chunk(
            dek, prefix, last, False, pieces[last]
        ),
        "chunks/bad/1-truncated.bin": chunks[1][:-1],
    }
    files.update(bad_chunks)

    def manifest_case(name: str, payload: str, expect: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "kind": "manifest", "desired": payload, "expect": expect, **extra}

    def chunk_case(
        name: str, index: int, payload: str, expect: str, **extra: Any
    ) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "chunk",
            "desired": "desired/good.json",
            "index": index,
            "artifact": extra.pop("artifact", artifact_id),
            "chunk": payload,
            "expect": expect,
            **extra,
        }

    def rotation_case(name: str, payload: str, expect: str) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "rotation",
            "statement": payload,
            "trusted_public_key": b64(raw_public(platform)),
            "trusted_version": 0,
            "expect": expect,
            **({"new_key_id": crypto.key_id(rotated.public_key())} if expect == "accept" else {}),
        }

    all_chunks = [f"chunks/{i}.bin" for i in range(count)]
    cases = [
        manifest_case("good manifest", "desired/good.json", "accept", sequences={MODEL: SEQUENCE}),
        manifest_case("not JSON", "desired/not-json.json", "malformed"),
        manifest_case("chunk_count disagrees with size", "desired/inconsistent.json", "malformed"),
        manifest_case("body changed after signing", "desired/tampered-body.json", "signature"),
        manifest_case("signed by another key", "desired/other-signer.json", "signature"),
        manifest_case("for another device", "desired/other-device.json", "wrong_device"),
        manifest_case("expired", "desired/expired.json", "expired"),
        manifest_case(
            "issued after the device's clock", "desired/issued-in-the-future.json", "clock_skew"
        ),
        manifest_case(
            "older sequence than accepted",
            "desired/replay.json",
            "replay",
            sequences={MODEL: SEQUENCE},
        ),
        manifest_case(
            "data key sealed for another device", "desired/key-for-other-device.json", "sealed_key"
        ),
        manifest_case(
            "data key sealed for another artifact",
            "desired/key-for-other-artifact.json",
            "sealed_key",
        ),
        manifest_case(
            "signed by the rotated key, with the chain from the pinned key",
            "desired/rotated-key-with-chain.json",
            "accept",
        ),
        manifest_case(
            "signed by the retired key after the device followed the rotation",
            "desired/by-retired-key.json",
            "signature",
            followed=["rotation/valid.json"],
        ),
        rotation_case("valid rotation statement", "rotation/valid.json", "accept"),
        rotation_case(
            "previous key's signature missing",
            "rotation/missing-previous-signature.json",
            "refuse",
        ),
        rotation_case(
            "new key's signature missing", "rotation/missing-new-signature.json", "refuse"
        ),
        rotation_case(
            "previous key's signature made by another key",
            "rotation/previous-signature-by-another-key.json",
            "refuse",
        ),
        rotation_case("version skips one", "rotation/wrong-version.json", "refuse"),
        chunk_case("bit flipped", 1, "chunks/bad/1-bit-flipped.bin", "chunk_integrity"),
        chunk_case("chunk 0 sent as chunk 1", 1, "chunks/bad/1-is-chunk-0.bin", "chunk_integrity"),
        chunk_case(
            "final chunk without the last flag (truncation)",
            last,
            f"chunks/bad/{last}-not-marked-last.bin",
            "chunk_integrity",
        ),
        chunk_case("one byte short", 1, "chunks/bad/1-truncated.bin", "chunk_size"),
        chunk_case("index beyond chunk_count", count, "chunks/0.bin", "chunk_size"),
        chunk_case(
            "labelled with another artifact",
            0,
            "chunks/0.bin",
            "foreign_chunk",
            artifact=wrong_digest_id,
        ),
        {
            "name": "whole transfer",
            "kind": "transfer",
            "desired": "desired/good.json",
            "chunks": all_chunks,
            "expect": "accept",
            "plaintext": "plaintext.bin",
        },
        {
            "name": "plaintext does not match the manifest's SHA-256",
            "kind": "transfer",
            "desired": "desired/wrong-digest.json",
            "chunks": all_chunks,
            "expect": "digest_mismatch",
        },
    ]
    keys = {
        "device_id": DEVICE_ID,
        "platform_signing_seed": seed("platform signing key").hex(),
        "platform_public_key": b64(raw_public(platform)),
        "platform_key_id": crypto.key_id(platform.public_key()),
        "device_private_key": seed("device key").hex(),
        "device_public_key": b64(raw_public(device)),
        "dek": dek.hex(),
        "nonce_prefix": prefix.hex(),
        "hpke_suite": crypto.HPKE_SUITE_NAME,
        "hpke_info": crypto.dek_info(DEVICE_ID, artifact_id).decode(),
        "signature_context": crypto.MANIFEST_SIGNATURE_CONTEXT.decode().replace("\x00", "\\0"),
        "rotated_signing_seed": seed("rotated platform signing key").hex(),
        "rotated_public_key": b64(raw_public(rotated)),
        "rotated_key_id": crypto.key_id(rotated.public_key()),
        "rotation_signature_context": crypto.KEY_ROTATION_SIGNATURE_CONTEXT.decode().replace(
            "\x00", "\\0"
        ),
    }
    summary = {
        "protocol": "EdgeAIForge device protocol v1 (docs/device-protocol.md)",
        "artifact_id": artifact_id,
        "size": len(plaintext),
        "chunk_size": CHUNK_SIZE,
        "chunk_count": count,
        "valid_between": [ISSUED_AT, EXPIRES_AT],
        "keys": keys,
        "cases": cases,
    }
    files["vectors.json"] = (json.dumps(summary, indent=2) + "\n").encode()
    for name, data in files.items():
        path = OUT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"wrote {len(files)} files to {OUT}")


if __name__ == "__main__":
    main()

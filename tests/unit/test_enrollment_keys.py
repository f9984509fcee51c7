"""The enrolment request refuses X25519 public keys that no secret can be shared with."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from schemas.deployer import (
    X25519_LOW_ORDER_POINTS,
    Capabilities,
    EnrollRequest,
    check_x25519_public_key,
)

#: libsodium's list (``has_small_order`` in crypto_scalarmult/curve25519/ref10), written out
#: as it is there, so that a slip in the project's own list shows.
LIBSODIUM_BLOCKLIST = (
    "0000000000000000000000000000000000000000000000000000000000000000",  # 0 (order 4)
    "0100000000000000000000000000000000000000000000000000000000000000",  # 1 (order 1)
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p - 1 (order 2)
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p (= 0)
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p + 1 (= 1)
)
BLOCKED = [bytes.fromhex(h) for h in LIBSODIUM_BLOCKLIST]
# X25519 ignores the top bit of u (RFC 7748 section 5): the same points with it set.
BLOCKED += [raw[:31] + bytes([raw[31] | 0x80]) for raw in BLOCKED]


def request(raw: bytes) -> EnrollRequest:
    return EnrollRequest(
        token="t" * 16,
        device_id="cam-1",
        public_key=base64.b64encode(raw).decode(),
        capabilities=Capabilities(onnxruntime_version="1.20.0"),
    )


def test_the_list_is_libsodiums() -> None:
    assert {int.from_bytes(bytes.fromhex(h), "little") for h in LIBSODIUM_BLOCKLIST} == set(
        X25519_LOW_ORDER_POINTS
    )


@pytest.mark.parametrize("raw", BLOCKED, ids=lambda raw: raw.hex()[:8] + "…" + raw.hex()[-2:])
def test_every_low_order_point_is_refused(raw: bytes) -> None:
    # The library agrees: the exchange would give an all-zero secret, which it refuses.
    with pytest.raises(ValueError, match="shared key"):
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    with pytest.raises(ValidationError, match="small order"):
        request(raw)
    with pytest.raises(ValueError, match="small order"):
        check_x25519_public_key(base64.b64encode(raw).decode())


def test_a_real_key_is_accepted() -> None:
    raw = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert request(raw).public_key == base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("AAAA", "32 bytes"),
        ("not base64!", "not base64"),
        (base64.b64encode(b"x" * 33).decode(), "32 bytes"),
    ],
)
def test_what_is_no_key_says_so(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_x25519_public_key(value)

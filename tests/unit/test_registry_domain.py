"""The registry's pure rules: status transitions, retention choice, tokens, names, ranges."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.ids import is_semver
from schemas.registry import (
    CreateVersionRequest,
    SetAliasRequest,
    VersionStatus,
)
from services.api.errors import RangeNotSatisfiable
from services.api.streaming import ByteRange, parse_range
from services.registry.domain import (
    RetentionCandidate,
    hash_secret,
    new_api_token,
    next_status,
    parse_token,
    secret_matches,
    select_prunable,
)

S = VersionStatus


@pytest.mark.parametrize(
    ("current", "kind", "expected"),
    [
        (S.VALIDATING, "validated", S.VALIDATED),
        (S.UPLOADED, "validated", S.VALIDATED),
        (S.VALIDATED, "analyzed", S.ANALYZED),
        (S.ANALYZED, "validated", S.ANALYZED),  # a late validation never goes back
        (S.VALIDATING, "rejected", S.REJECTED),
        (S.REJECTED, "analyzed", S.REJECTED),
        (S.REJECTED, "validated", S.REJECTED),
        (S.VALIDATING, "analyzed", S.ANALYZED),
    ],
)
def test_status_never_goes_back(current: VersionStatus, kind: str, expected: VersionStatus) -> None:
    assert next_status(current, kind) is expected  # type: ignore[arg-type]


def versions(n: int) -> list[RetentionCandidate]:
    # Deliberately out of order: the sequence, not the list order, says what is oldest.
    return [RetentionCandidate(f"1.{i}.0", i) for i in reversed(range(1, n + 1))]


def test_retention_prunes_oldest_first() -> None:
    assert select_prunable(versions(5), keep=3, protected=set()) == ["1.1.0", "1.2.0"]


def test_retention_prunes_rejected_versions_before_older_good_ones() -> None:
    candidates = versions(5)
    candidates[1] = RetentionCandidate("1.4.0", 4, rejected=True)
    assert select_prunable(candidates, keep=3, protected=set()) == ["1.4.0", "1.1.0"]
    assert select_prunable(candidates, keep=4, protected={"1.4.0"}) == ["1.1.0"]


def test_retention_skips_protected_and_they_still_count() -> None:
    assert select_prunable(versions(5), keep=3, protected={"1.1.0"}) == ["1.2.0", "1.3.0"]
    assert select_prunable(versions(4), keep=2, protected={"1.1.0", "1.2.0", "1.3.0"}) == ["1.4.0"]
    # When everything old is protected, more than `keep` remain rather than a protected one go.
    assert select_prunable(versions(3), keep=1, protected={"1.1.0", "1.2.0", "1.3.0"}) == []


def test_retention_under_the_limit_deletes_nothing() -> None:
    assert select_prunable(versions(3), keep=3, protected=set()) == []
    assert select_prunable([], keep=1, protected=set()) == []


def test_tokens_round_trip_and_only_the_hash_matches() -> None:
    token = new_api_token()
    parsed = parse_token(token.token)
    assert parsed == token
    stored = hash_secret(token.secret)
    assert token.secret not in stored
    assert secret_matches(token.secret, stored)
    assert not secret_matches(new_api_token().secret, stored)
    for bad in ("", "Bearer x", "eaf_123_abc", token.token + "x", token.token.replace("eaf_", "")):
        assert parse_token(bad) is None


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "-x", "a b", "x" * 129, ""])
def test_path_like_or_odd_model_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        CreateVersionRequest(model=name, version="1.0.0", artifact_id="a" * 64, size_bytes=1)


def test_versions_must_be_semver_and_aliases_must_not_look_like_one() -> None:
    assert is_semver("1.0.0") and is_semver("2.1.3-rc.1+build.5")
    assert not any(is_semver(v) for v in ("1.0", "v1.0.0", "latest", "01.0.0"))
    with pytest.raises(ValidationError, match="semantic version"):
        CreateVersionRequest(model="m", version="1.0", artifact_id="a" * 64, size_bytes=1)
    with pytest.raises(ValidationError, match="looks like a version"):
        SetAliasRequest(model="m", alias="2.0.0", version="1.0.0")
    assert SetAliasRequest(model="m", alias="production", version="1.0.0").alias == "production"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", ByteRange(0, 10)),
        ("bytes=5-", ByteRange(5, 100)),
        ("bytes=-10", ByteRange(90, 100)),
        ("bytes=-500", ByteRange(0, 100)),
        ("bytes=90-1000", ByteRange(90, 100)),
        ("bytes=0-1,5-6", None),  # multiple ranges: the whole thing
        ("items=0-1", None),
        ("bytes=9-3", None),
    ],
)
def test_range_header(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 100) == expected


def test_range_beyond_the_end_is_not_satisfiable() -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=100-", 100)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-0", 100)

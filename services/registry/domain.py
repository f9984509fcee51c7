"""The registry's rules, without I/O: status transitions, retention choice, API key tokens."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from schemas.registry import VersionStatus, is_deployable

__all__ = [
    "DEPLOYABLE",
    "ApiToken",
    "RetentionCandidate",
    "hash_secret",
    "new_api_token",
    "next_status",
    "parse_token",
    "secret_matches",
    "select_prunable",
]

EventKind = Literal["validated", "rejected", "analyzed"]

_S = VersionStatus

#: What a deployment without a version may take: the newest of these by sequence.
DEPLOYABLE = frozenset(s for s in VersionStatus if is_deployable(s))


def next_status(current: VersionStatus, kind: EventKind) -> VersionStatus:
    """The status after an event, whatever order the events arrive in.

    Events are at least once and may be redelivered late, so a transition never goes back:
    ``analyzed`` stays analyzed when a late ``validated`` arrives, and a rejected version
    stays rejected whatever the analyzer says.
    """
    if current is _S.REJECTED:
        return _S.REJECTED
    if kind == "rejected":
        return _S.REJECTED
    if kind == "analyzed":
        return _S.ANALYZED
    # validated
    return _S.ANALYZED if current is _S.ANALYZED else _S.VALIDATED


@dataclass(frozen=True, slots=True)
class RetentionCandidate:
    version: str
    sequence: int
    #: Refused by the validator: it can never deploy, so it goes before any other.
    rejected: bool = False


def select_prunable(
    versions: Iterable[RetentionCandidate], *, keep: int, protected: set[str]
) -> list[str]:
    """Versions to delete so that at most ``keep`` remain: rejected ones first, then the
    oldest (lowest sequence) first.

    A protected version (aliased, or in use on a device) is never chosen but still counts
    towards ``keep``; when protection leaves too few candidates, more than ``keep`` remain.
    """
    ordered: Sequence[RetentionCandidate] = sorted(
        versions, key=lambda v: (not v.rejected, v.sequence)
    )
    excess = len(ordered) - keep
    chosen: list[str] = []
    for v in ordered:
        if excess <= 0:
            break
        if v.version in protected:
            continue
        chosen.append(v.version)
        excess -= 1
    return chosen


# ---- API keys ------------------------------------------------------------------------

_TOKEN = re.compile(r"^eaf_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class ApiToken:
    key_id: str
    secret: str

    @property
    def token(self) -> str:
        return f"eaf_{self.key_id}_{self.secret}"


def new_api_token() -> ApiToken:
    """A fresh token: a public key id (for lookup and revocation) and a 256-bit secret."""
    return ApiToken(key_id=secrets.token_hex(6), secret=secrets.token_urlsafe(32))


def parse_token(token: str) -> ApiToken | None:
    """The parts of a well-formed token, else None."""
    m = _TOKEN.match(token)
    return ApiToken(key_id=m.group(1), secret=m.group(2)) if m else None


def hash_secret(secret: str) -> str:
    # The secret is 256 random bits, so a plain SHA-256 is as strong as a slow KDF here
    # and keeps each request's check cheap.
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)

"""KEK rotation: wrap every artifact's data key with the current KEK, chunks untouched.

Resumable by construction: an artifact already wrapped by the current KEK is skipped, so a
run that was interrupted is finished by running it again. Readers keep working throughout:
every KEK of the keyring opens what it wrapped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.artifacts._format import ArtifactNotFoundError
from services.common.artifacts._store import ArtifactStore

__all__ = ["KekRotation", "kek_usage", "rotate_kek"]


@dataclass
class KekRotation:
    """What a run of ``rotate_kek`` did, and which KEK wraps how many artifacts after it."""

    rewrapped: int = 0
    unchanged: int = 0
    #: Headers put back after an earlier run was cut off in the middle of a write.
    restored: int = 0
    #: KEK id -> artifacts it wraps ("unencrypted" for artifacts stored in the clear).
    usage: Counter[str] = field(default_factory=Counter)

    def retired(self, active_id: str) -> list[str]:
        """KEKs of the keyring that no artifact needs any more."""
        return [k for k in self.usage if k != active_id and self.usage[k] == 0]


def kek_usage(store: ArtifactStore) -> Counter[str]:
    """How many artifacts each KEK wraps ("" for artifacts written before KEK ids)."""
    usage: Counter[str] = Counter()
    for artifact_id in store.artifact_ids():
        try:
            info = store.info(artifact_id)
        except ArtifactNotFoundError:
            continue
        usage[info.kek_id if info.encrypted else "unencrypted"] += 1
    return usage


def rotate_kek(
    store: ArtifactStore, *, progress: Callable[[str, bool], None] | None = None
) -> KekRotation:
    """Wrap every data key with the keyring's current KEK; ``progress(id, rewrapped)``
    is called after each artifact."""
    if store.keys is None:
        raise ValueError("encryption at rest is disabled: there is no KEK to rotate")
    result = KekRotation(restored=store.recover_rewraps())
    for artifact_id in store.artifact_ids():
        try:
            changed = store.rewrap(artifact_id)
        except (ArtifactNotFoundError, FileNotFoundError):  # deleted meanwhile
            continue
        if changed:
            result.rewrapped += 1
        else:
            result.unchanged += 1
        if progress is not None:
            progress(artifact_id, changed)
    result.usage = kek_usage(store)
    for kek_id in store.keys.ids():
        result.usage.setdefault(kek_id, 0)
    return result

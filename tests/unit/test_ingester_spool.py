"""The ingester's spool: one row per message, read and forgotten whole, bounded by points."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.ingester.store import Spool


def lines(tag: str, n: int) -> list[str]:
    return [f"m,k={tag} v={i}i {i}" for i in range(n)]


def test_messages_are_peeked_whole_until_the_limit_and_removed_by_id(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_points=1000, max_rejected=10)
    try:
        assert spool.add_points([lines("a", 3), lines("b", 3), [], lines("c", 3)]) == 0
        assert spool.count == 9
        first = spool.peek(4)
        assert [batch for _, batch in first] == [lines("a", 3), lines("b", 3)]
        rest = spool.peek(4, after=first[-1][0])
        assert [batch for _, batch in rest] == [lines("c", 3)]
        assert spool.peek(4, after=rest[-1][0]) == []
        spool.remove(first[-1][0])
        assert spool.count == 3
        assert [batch for _, batch in spool.peek(100)] == [lines("c", 3)]
    finally:
        spool.close()


def test_a_full_spool_drops_exactly_the_oldest_points_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, max_points=10, max_rejected=10)
    try:
        spool.add_points([lines("a", 4), lines("b", 4)])
        # 4 + 4 + 5 = 13 points, 3 too many: the 3 oldest of "a" go, its newest stays.
        assert spool.add_points([lines("c", 5)]) == 3
        assert spool.count == 10
        kept = [line for _, batch in spool.peek(100) for line in batch]
        assert kept == lines("a", 4)[3:] + lines("b", 4) + lines("c", 5)
        # A message larger than the whole spool keeps only its own newest points.
        assert spool.add_points([lines("d", 12)]) == 12
        kept = [line for _, batch in spool.peek(100) for line in batch]
        assert kept == lines("d", 12)[2:]
        assert spool.count == 10 and spool.dropped == 15
    finally:
        spool.close()
    reopened = Spool(path, max_points=10, max_rejected=10)
    try:
        assert reopened.count == 10 and reopened.dropped == 15
    finally:
        reopened.close()


def test_points_of_an_earlier_spool_file_are_carried_over_in_order(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE points (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL, "
        "spooled_at REAL NOT NULL);"
    )
    db.executemany(
        "INSERT INTO points (line, spooled_at) VALUES (?, 1.0)", [(x,) for x in lines("o", 3)]
    )
    db.commit()
    db.close()
    spool = Spool(path, max_points=100, max_rejected=10)
    try:
        assert spool.count == 3
        assert [line for _, batch in spool.peek(100) for line in batch] == lines("o", 3)
    finally:
        spool.close()


def test_a_removal_older_than_the_enrolment_is_ignored(tmp_path) -> None:
    from services.ingester.domain import Reason

    spool = Spool(tmp_path / "spool.db", max_points=100, max_rejected=100)
    try:
        spool.enrol("a", lambda _: None, enrolled_at=100.0)
        assert not spool.remove_device("a", removed_at=99.0)
        assert spool.is_known("a")
        assert spool.remove_device("a", removed_at=101.0)
        assert spool.check_or_set_aside("a", topic="t", payload=b"x") == Reason.DEVICE_REMOVED
        assert spool.check_or_set_aside("b", topic="t", payload=b"x") == Reason.UNKNOWN_DEVICE
        assert spool.enrol("a", lambda _: [], enrolled_at=100.5) == 0
        assert spool.is_removed("a")
    finally:
        spool.close()
    # The state survives a restart.
    again = Spool(tmp_path / "spool.db", max_points=100, max_rejected=100)
    try:
        assert again.is_removed("a") and not again.is_known("a")
        again.enrol("a", lambda _: [], enrolled_at=102.0)
        assert again.is_known("a") and not again.is_removed("a")
        assert again.check_or_set_aside("a", topic="t", payload=b"x") is None
    finally:
        again.close()

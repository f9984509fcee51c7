"""A bounded on-disk spool of metrics batches for a device that cannot reach its broker.

Batches wait here, oldest first, until the broker has acknowledged them; they keep their
own timestamps, so metrics sent late land where they belong. When the spool is full the
oldest batches are dropped and counted (the count survives restarts and travels in the
next batches as ``spool_dropped``). SQLite in WAL mode: a device that loses power loses at
most the batch being written.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

__all__ = ["MetricsSpool", "SpoolError", "SpooledBatch"]


class SpoolError(Exception):
    """The spool file cannot be opened or written."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"metrics spool {path} cannot be used: {reason}; check that its directory is "
            "writable and the disk has room"
        )


SpooledBatch = tuple[int, bytes]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('dropped', 0);
"""


class MetricsSpool:
    """Batches (serialised ``MetricsBatch`` JSON) waiting to be published, bounded.

    ``max_batches`` and ``max_bytes`` both bound it; the oldest batches go first.
    """

    def __init__(self, path: Path, *, max_batches: int = 10_000, max_bytes: int = 64 << 20) -> None:
        if max_batches < 1 or max_bytes < 1:
            raise ValueError("max_batches and max_bytes must be positive")
        self.path = path
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(path, str(exc)) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, payload: bytes) -> int:
        """Keep one batch; returns how many old batches were dropped to make room."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT INTO batches (payload) VALUES (?)", (payload,))
                dropped = self._trim()
                if dropped:
                    self._db.execute(
                        "UPDATE counters SET value = value + ? WHERE name = 'dropped'", (dropped,)
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise SpoolError(self.path, str(exc)) from exc
            return dropped

    def _trim(self) -> int:
        count, size = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM batches"
        ).fetchone()
        dropped = 0
        while count > 1 and (count > self.max_batches or size > self.max_bytes):
            row = self._db.execute(
                "SELECT id, length(payload) FROM batches ORDER BY id LIMIT 1"
            ).fetchone()
            self._db.execute("DELETE FROM batches WHERE id = ?", (row[0],))
            count -= 1
            size -= row[1]
            dropped += 1
        return int(dropped)

    def peek(self, limit: int = 100) -> list[SpooledBatch]:
        """The oldest ``limit`` batches as (id, payload)."""
        with self._lock:
            return [
                (int(i), bytes(p))
                for i, p in self._db.execute(
                    "SELECT id, payload FROM batches ORDER BY id LIMIT ?", (limit,)
                )
            ]

    def remove(self, batch_id: int) -> None:
        """Forget a batch the broker has acknowledged."""
        with self._lock:
            self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM batches").fetchone()[0])

    @property
    def dropped(self) -> int:
        """Batches dropped because the spool was full, since it was created."""
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0])

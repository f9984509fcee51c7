"""The ingester's on-disk state: one SQLite file in WAL mode.

Tables:

- ``messages``: accepted points until InfluxDB has them, one row per message (its
  line-protocol lines together, as a JSON array, and how many), in arrival order;
- ``rejected``: messages set aside with their reason (bounded, oldest dropped first);
- ``influx_rejected``: single points InfluxDB itself refused (4xx);
- ``known_devices``: devices seen in ``eaf.device.enrolled`` (with the event's time);
- ``removed_devices``: devices seen in ``eaf.device.removed`` since their last enrolment.

One connection guarded by a lock serves the MQTT worker thread and the asyncio writer
(through ``asyncio.to_thread``); every method is one short transaction. ``synchronous=FULL``
makes a commit durable before the MQTT message is acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.ingester.domain import Reason
from services.ingester.errors import SpoolError

__all__ = ["RejectedMessage", "Spool"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    points INTEGER NOT NULL,
    lines TEXT NOT NULL,
    spooled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    topic TEXT NOT NULL,
    device_id TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_device ON rejected (device_id, reason);
CREATE TABLE IF NOT EXISTS influx_rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rejected_at REAL NOT NULL,
    line TEXT NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS known_devices (
    device_id TEXT PRIMARY KEY,
    enrolled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS removed_devices (
    device_id TEXT PRIMARY KEY,
    removed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

#: Bytes of a refused payload kept for inspection. Messages of unknown devices are kept
#: whole (they are at most MAX_METRICS_PAYLOAD_BYTES), since enrolment re-admits them;
#: those of removed devices too, so an operator can still recover what was in flight.
KEPT_PAYLOAD_BYTES = 4 * 1024
_KEPT_WHOLE = (Reason.UNKNOWN_DEVICE, Reason.DEVICE_REMOVED)


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    """A message set aside, as stored."""

    id: int
    received_at: float
    topic: str
    device_id: str | None
    reason: str
    detail: str
    size: int
    payload: bytes


class Spool:
    """The ingester's SQLite file; see the module docstring."""

    def __init__(self, path: Path, *, max_points: int, max_rejected: int) -> None:
        self.path = path
        self.max_points = max_points
        self.max_rejected = max_rejected
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)
            self._adopt_point_rows()
            self._count = int(
                self._db.execute("SELECT coalesce(sum(points), 0) FROM messages").fetchone()[0]
            )
            self._known = {r[0] for r in self._db.execute("SELECT device_id FROM known_devices")}
            self._removed: dict[str, float] = dict(
                self._db.execute("SELECT device_id, removed_at FROM removed_devices")
            )
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
            self._dropped = int(row[0]) if row else 0
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(str(path), str(exc)) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- points -----------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Points waiting for InfluxDB."""
        return self._count

    @property
    def dropped(self) -> int:
        """Points dropped, oldest first, because the spool was full (ever, persistent)."""
        return self._dropped

    def add_points(self, groups: Iterable[Sequence[str]]) -> int:
        """Commit the lines of several messages in one durable transaction.

        Each group (a message's points) is one row, read and forgotten together. A full
        spool makes room by dropping its oldest points in the same transaction (counted
        in ``dropped``): during a long InfluxDB outage the newest metrics are the ones
        worth keeping, and the MQTT session never stalls. Returns the number of points
        dropped by this call.
        """
        now = time.time()
        rows = [(len(group), json.dumps(list(group)), now) for group in groups if group]
        if not rows:
            return 0
        added = sum(n for n, _, _ in rows)
        with self._lock:
            excess = max(0, self._count + added - self.max_points)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO messages (points, lines, spooled_at) VALUES (?, ?, ?)", rows
                )
                if excess:
                    self._drop_oldest_locked(excess)
                    self._db.execute(
                        "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                        (excess,),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count += added - excess
            self._dropped += excess
        return excess

    def _drop_oldest_locked(self, excess: int) -> None:
        # Whole messages while they fit in ``excess``; the oldest points of the last one.
        doomed: list[tuple[int]] = []
        trimmed: tuple[int, str, int] | None = None
        oldest = self._db.execute("SELECT id, points, lines FROM messages ORDER BY id")
        for row_id, points, lines in oldest:
            if points <= excess:
                doomed.append((row_id,))
                excess -= points
            else:
                kept = json.loads(lines)[excess:]
                trimmed = (len(kept), json.dumps(kept), row_id)
                excess = 0
            if not excess:
                break
        oldest.close()
        self._db.executemany("DELETE FROM messages WHERE id = ?", doomed)
        if trimmed is not None:
            self._db.execute("UPDATE messages SET points = ?, lines = ? WHERE id = ?", trimmed)

    def peek(self, limit: int, *, after: int = 0) -> list[tuple[int, list[str]]]:
        """The oldest messages with an id above ``after``, as (id, lines), whole messages
        until they hold at least ``limit`` points (one message at least, when any)."""
        out: list[tuple[int, list[str]]] = []
        taken = 0
        with self._lock:
            for row_id, points, lines in self._db.execute(
                "SELECT id, points, lines FROM messages WHERE id > ? ORDER BY id", (after,)
            ):
                out.append((row_id, json.loads(lines)))
                taken += points
                if taken >= limit:
                    break
        return out

    def remove(self, up_to_id: int) -> None:
        """Forget the messages with id <= ``up_to_id``: InfluxDB has their points.

        The count follows what was deleted: a full spool may have dropped some of these
        points while they were being written.
        """
        with self._lock:
            deleted = self._db.execute(
                "DELETE FROM messages WHERE id <= ? RETURNING points", (up_to_id,)
            ).fetchall()
            self._count = max(0, self._count - sum(n for (n,) in deleted))

    def _adopt_point_rows(self) -> None:
        # A spool written by an earlier version keeps one row per point in ``points``:
        # carry those over (in order, one row each) before anything new is added.
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'points'"
        ).fetchone()
        if exists is None:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO messages (points, lines, spooled_at) "
                "SELECT 1, json_array(line), spooled_at FROM points ORDER BY id"
            )
            self._db.execute("DROP TABLE points")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def oldest_age(self) -> float:
        """Seconds the oldest waiting point has spent in the spool (0 when empty)."""
        with self._lock:
            row = self._db.execute("SELECT min(spooled_at) FROM messages").fetchone()
        return max(0.0, time.time() - row[0]) if row and row[0] is not None else 0.0

    # ---- set-aside messages -----------------------------------------------------------

    def set_aside(
        self, *, topic: str, device_id: str | None, reason: str, detail: str, payload: bytes
    ) -> None:
        """Keep a refused message with its reason; the oldest go beyond ``max_rejected``."""
        with self._lock:
            self._set_aside_locked(topic, device_id, reason, detail, payload)

    def _set_aside_locked(
        self, topic: str, device_id: str | None, reason: str, detail: str, payload: bytes
    ) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO rejected (received_at, topic, device_id, reason, detail, size, "
                "payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    topic[:1024],
                    device_id,
                    reason,
                    detail[:2000],
                    len(payload),
                    payload if reason in _KEPT_WHOLE else payload[:KEPT_PAYLOAD_BYTES],
                ),
            )
            self._db.execute(
                "DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - ?",
                (self.max_rejected,),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def rejected(self, reason: str | None = None) -> list[RejectedMessage]:
        """Set-aside messages, oldest first, optionally of one reason."""
        query = "SELECT * FROM rejected"
        args: tuple[str, ...] = ()
        if reason is not None:
            query += " WHERE reason = ?"
            args = (reason,)
        with self._lock:
            rows = list(self._db.execute(query + " ORDER BY id", args))
        return [RejectedMessage(*r) for r in rows]

    def add_influx_rejects(self, rejects: list[tuple[str, str]]) -> None:
        """Keep points InfluxDB refused, as (line, error)."""
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT INTO influx_rejected (rejected_at, line, error) VALUES (?, ?, ?)",
                [(now, line, error[:2000]) for line, error in rejects],
            )
            self._db.execute(
                "DELETE FROM influx_rejected WHERE id <= (SELECT max(id) FROM influx_rejected) - ?",
                (self.max_rejected,),
            )

    def influx_rejects(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._db.execute("SELECT line, error FROM influx_rejected ORDER BY id"))

    # ---- known devices ----------------------------------------------------------------

    def is_known(self, device_id: str) -> bool:
        return device_id in self._known

    @property
    def known_count(self) -> int:
        return len(self._known)

    def is_removed(self, device_id: str) -> bool:
        return device_id in self._removed

    def check_or_set_aside(self, device_id: str, *, topic: str, payload: bytes) -> Reason | None:
        """None if the device is known; else set the message aside, atomically, and return
        why: ``Reason.UNKNOWN_DEVICE`` (kept until it enrols) or ``Reason.DEVICE_REMOVED``.

        Atomic with ``enrol`` and ``remove_device``: a message is either accepted or set aside
        with the reason that held when it was checked, never neither.
        """
        with self._lock:
            if device_id in self._known:
                return None
            if device_id in self._removed:
                reason = Reason.DEVICE_REMOVED
                detail = f"device {device_id!r} was removed from the fleet (eaf.device.removed)"
            else:
                reason = Reason.UNKNOWN_DEVICE
                detail = (
                    f"device {device_id!r} is not enrolled (no eaf.device.enrolled seen); "
                    "kept until it is"
                )
            self._set_aside_locked(topic, device_id, reason, detail, payload)
            return reason

    def remove_device(self, device_id: str, *, removed_at: float) -> bool:
        """Refuse ``device_id``'s messages from now on (set aside as ``Reason.DEVICE_REMOVED``).

        Its points already accepted stay in the spool and reach InfluxDB. Enrolments and
        removals come from two consumers, so out of order: a removal older than the
        device's latest enrolment is ignored. Returns whether the device is now refused.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT enrolled_at FROM known_devices WHERE device_id = ?", (device_id,)
            ).fetchone()
            if row is not None and row[0] > removed_at:
                return False
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM known_devices WHERE device_id = ?", (device_id,))
                self._db.execute(
                    "INSERT INTO removed_devices (device_id, removed_at) VALUES (?, ?) "
                    "ON CONFLICT(device_id) DO UPDATE SET "
                    "removed_at = max(removed_at, excluded.removed_at)",
                    (device_id, removed_at),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._known.discard(device_id)
            self._removed[device_id] = max(self._removed.get(device_id, removed_at), removed_at)
            return True

    def enrol(
        self,
        device_id: str,
        readmit: Callable[[RejectedMessage], list[str] | None],
        *,
        enrolled_at: float | None = None,
    ) -> int:
        """Remember ``device_id`` and re-admit its messages set aside as unknown.

        ``readmit`` turns a set-aside message into its points (None: leave it aside).
        ``enrolled_at`` is the enrolment's time (default: now); an enrolment older than the
        device's removal changes nothing, a newer one takes it back into the fleet (what
        was set aside because it was removed stays aside). Returns the number of messages
        re-admitted.
        """
        at = time.time() if enrolled_at is None else enrolled_at
        with self._lock:
            removed_at = self._removed.get(device_id)
            if removed_at is not None and at <= removed_at:
                return 0
            was_known = device_id in self._known
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO known_devices (device_id, enrolled_at) VALUES (?, ?) "
                    "ON CONFLICT(device_id) DO UPDATE SET "
                    "enrolled_at = max(enrolled_at, excluded.enrolled_at)",
                    (device_id, at),
                )
                self._db.execute("DELETE FROM removed_devices WHERE device_id = ?", (device_id,))
                rows = [
                    RejectedMessage(*r)
                    for r in self._db.execute(
                        "SELECT * FROM rejected WHERE device_id = ? AND reason = 'unknown_device' "
                        "ORDER BY id",
                        (device_id,),
                    )
                ]
                messages: list[tuple[int, str, float]] = []
                taken: list[int] = []
                now = time.time()
                self._known.add(device_id)
                for row in rows:
                    points = readmit(row)
                    if points is not None:
                        if points:
                            messages.append((len(points), json.dumps(points), now))
                        taken.append(row.id)
                self._db.executemany(
                    "INSERT INTO messages (points, lines, spooled_at) VALUES (?, ?, ?)", messages
                )
                self._db.executemany("DELETE FROM rejected WHERE id = ?", [(i,) for i in taken])
                self._db.execute("COMMIT")
            except BaseException:
                if not was_known:
                    self._known.discard(device_id)
                self._db.execute("ROLLBACK")
                raise
            self._removed.pop(device_id, None)
            self._count += sum(n for n, _, _ in messages)
            return len(taken)

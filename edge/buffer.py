"""Store-and-forward: a bounded, disk-backed outbox between the sources and MQTT.

SQLite in WAL mode with ``synchronous=FULL``: a batch is on disk once ``put``
returns, so it survives ``kill -9`` and a power cut, and it is deleted only after
the broker acknowledged it (QoS 1 PUBACK). When the outbox is over its bound the
oldest messages are dropped and counted (never a crash or a full disk); the file
stays near the bound (freed pages are reused, the journal is kept near 1 MB).
One thread uses it: the agent's event loop.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class DiskQueue:
    def __init__(self, path: str | Path, max_bytes: int = 100 * 2**20):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        # keep the write-ahead log small: disk use stays near the bound (about 1 MB of journal on top)
        self.db.execute("PRAGMA wal_autocheckpoint=256")
        self.db.execute(f"PRAGMA journal_size_limit={2**20}")
        self.db.executescript(SCHEMA)
        self.bytes = self.db.execute(
            "SELECT COALESCE(SUM(LENGTH(topic) + LENGTH(payload)), 0) FROM outbox").fetchone()[0]
        self.count = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]  # kept in memory from here on
        row = self.db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        self.dropped = row[0] if row else 0

    def put_many(self, items: list[tuple[str, bytes, int, bool]]) -> None:
        """Append messages (topic, payload, qos, retain) in order, durably; drop the oldest over the bound."""
        if not items:
            return
        with self.db:  # one transaction
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                                [(t, p, q, int(r)) for t, p, q, r in items])
            self.bytes += sum(len(t.encode()) + len(p) for t, p, _, _ in items)
            self.count += len(items)
            if self.bytes > self.max_bytes:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        over = self.bytes - self.max_bytes
        # read from the oldest only as far as needed (a cursor, not fetchall: a full outbox of small messages
        # made every flush read the whole table, 0.3 s for 100 MB)
        rows = self.db.execute("SELECT id, LENGTH(topic) + LENGTH(payload) FROM outbox ORDER BY id")
        freed, last, n = 0, None, 0
        for rid, size in rows:  # on the slow path only: the outbox is full
            if freed >= over:
                break
            freed += size
            last, n = rid, n + 1
        rows.close()
        if last is not None:
            self.db.execute("DELETE FROM outbox WHERE id <= ?", (last,))
            self.bytes -= freed
            self.count -= n
            self.dropped += n
            self.db.execute("INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (self.dropped,))

    def peek(self, after_id: int, limit: int) -> list[tuple[int, str, bytes, int, bool]]:
        """The next messages after ``after_id``, oldest first."""
        return [(i, t, p, q, bool(r)) for i, t, p, q, r in self.db.execute(
            "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))]

    def delete(self, ids) -> None:
        """Remove messages the broker acknowledged."""
        ids = list(ids)
        if not ids:
            return
        with self.db:
            self.db.execute("BEGIN")
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                marks = ",".join("?" * len(chunk))
                size = self.db.execute(f"SELECT COALESCE(SUM(LENGTH(topic) + LENGTH(payload)), 0) FROM outbox "
                                       f"WHERE id IN ({marks})", chunk).fetchone()[0]
                self.count -= self.db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk).rowcount
                self.bytes -= size

    def first_id(self) -> int | None:
        return self.db.execute("SELECT MIN(id) FROM outbox").fetchone()[0]

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        self.db.close()

"""The durable outbox of run results: a result is written here when its run ends and
removed only once the broker has acknowledged it (PUBACK), so a broker outage, a dropped
connection or an agent restart neither loses a result nor publishes it twice.

SQLite next to the run index (`<data-dir>/mqtt-outbox.sqlite`); the run index itself
belongs to the executor.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from labctl.store.sqlite_db import configure

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    run_id    TEXT PRIMARY KEY,
    payload   TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
-- the results still to publish: the publisher asks for them at every pass, and without this
-- SQLite read every result ever queued (payloads included) to find the few unpublished
CREATE INDEX IF NOT EXISTS results_unpublished ON results(published) WHERE published = 0;
"""


class Outbox:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        configure(self._db)
        self._db.executescript(_SCHEMA)

    def add(self, run_id: str, payload: dict[str, Any]) -> bool:
        """Queue a result; False (and nothing changes) if this run's result is known."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO results (run_id, payload) VALUES (?, ?)",
                (run_id, json.dumps(payload, default=str)),
            )
            return cur.rowcount == 1

    def pending(self) -> list[tuple[str, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, payload FROM results WHERE published=0 ORDER BY rowid"
            ).fetchall()
        return [(r[0], r[1].encode()) for r in rows]

    def mark_published(self, run_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE results SET published=1 WHERE run_id=?", (run_id,))

    def known(self) -> set[str]:
        """Every run id whose result is here, published or not."""
        with self._lock:
            rows = self._db.execute("SELECT run_id FROM results").fetchall()
        return {r[0] for r in rows}

    def is_published(self, run_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT published FROM results WHERE run_id=?",
                                   (run_id,)).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

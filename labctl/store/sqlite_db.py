"""How every SQLite file of a bench is opened: write-ahead log (readers in other processes
never block the writer), FULL sync (a committed write survives a power cut), and a bounded
page cache (256 KiB, not SQLite's 2 MB: the files grow with every run, the agent's memory
must not; bench/soak.py)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


def configure(db: sqlite3.Connection) -> None:
    """The pragmas every bench database shares (the run index, inventory, samples and the
    MQTT outbox)."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA cache_size=-256")


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One BEGIN IMMEDIATE transaction (one writer at a time, one commit): committed when
    the block ends, rolled back when it raises. The connection is in autocommit mode
    (isolation_level=None); the caller holds its own lock around the block."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")

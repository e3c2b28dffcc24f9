"""How every SQLite file of a bench is opened: write-ahead log (readers in other processes
never block the writer), FULL sync (a committed write survives a power cut), and a bounded
page cache (256 KiB, not SQLite's 2 MB: the files grow with every run, the agent's memory
must not; bench/soak.py)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path


def configure(db: sqlite3.Connection) -> None:
    """The pragmas every bench database shares (the run index, inventory, samples and the
    MQTT outbox)."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA cache_size=-256")


@contextlib.contextmanager
def transaction(db: sqlite3.Connection, *, durable: bool = True
                ) -> Iterator[sqlite3.Connection]:
    """One BEGIN IMMEDIATE transaction (one writer at a time, one commit): committed when
    the block ends, rolled back when it raises. The connection is in autocommit mode
    (isolation_level=None); the caller holds its own lock around the block.

    `durable=False` commits without the fsync (synchronous=NORMAL for this one commit): a
    killed process loses nothing, the write-ahead log is in the kernel's hands; a power cut
    may. For a caller that has the same data in a durable commit elsewhere and calls
    `sync_wal` before that copy is dropped (labctl.bench.service.Bench.accept)."""
    if not durable:
        db.execute("PRAGMA synchronous=NORMAL")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        if not durable:
            db.execute("PRAGMA synchronous=FULL")


def sync_wal(path: Path) -> None:
    """fsync a database's write-ahead log: what commits with `durable=False` wrote reaches
    the disk. Without a log file there is nothing to sync: a checkpoint moved its pages
    into the database file and synced it."""
    try:
        fd = os.open(f"{path}-wal", os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

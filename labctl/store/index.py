"""`<data-dir>/runs.sqlite`: the index of runs (for `labctl runs list|show`) and the table
of processed command ids that lets the MQTT agent answer a repeated command without running
it twice.

The run folders are the record; this index is a fast view of them. SQLite in WAL mode, one
short transaction per write, so readers (the TUI, `runs list`) never block a running bench.

One exception: a submitted run's first files (`submissions`) and claims (`submission_claims`:
the stock it will take, the samples it takes) are kept here too, from the commit that
accepts the run until the run leaves the queue. That commit is the one durable write a
submit waits for. The folder, the inventory's reservation and the samples' inputs are
written beside it without their fsyncs and synced after the reply; start-up puts back from
here what a power cut took (labctl.bench.recovery).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from labctl.store.sqlite_db import configure, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    recipe      TEXT NOT NULL,
    version     TEXT,
    sha256      TEXT,
    status      TEXT NOT NULL,
    bench_id    TEXT,
    instigator  TEXT,
    request_id  TEXT,
    fidelity    TEXT,
    created     TEXT NOT NULL,
    started     TEXT,
    ended       TEXT,
    path        TEXT NOT NULL,
    figures     TEXT,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
CREATE TABLE IF NOT EXISTS submissions (
    run_id   TEXT PRIMARY KEY,
    files    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS submission_claims (
    run_id   TEXT PRIMARY KEY,
    claims   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id       TEXT PRIMARY KEY,
    reply    TEXT NOT NULL,
    created  TEXT NOT NULL
);
"""

RUN_FIELDS = ("recipe", "version", "sha256", "status", "bench_id", "instigator", "request_id",
              "fidelity", "created", "started", "ended", "path", "figures", "error")


class RunIndex:
    """Thread-safe access to runs.sqlite (the MQTT agent and the executor share it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        configure(self._db)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- runs ----------------------------------------------------------------------------
    def upsert_run(self, run_id: str, **fields: Any) -> None:
        """Insert the run or update the given columns (figures as a dict)."""
        unknown = set(fields) - set(RUN_FIELDS)
        if unknown:
            raise KeyError(f"unknown run index columns: {', '.join(sorted(unknown))}")
        if "figures" in fields and not isinstance(fields["figures"], (str, type(None))):
            fields["figures"] = json.dumps(fields["figures"])
        leaves_queue = fields.get("status") not in (None, "queued", "created")
        with self._lock, transaction(self._db):
            self._upsert(run_id, fields)
            if leaves_queue:  # its folder is synced by now: its first files go, same commit
                self._forget_submission(run_id)

    def _upsert(self, run_id: str, fields: dict[str, Any]) -> None:
        row = self._db.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            fields.setdefault("recipe", "")
            fields.setdefault("status", "created")
            fields.setdefault("created", "")
            fields.setdefault("path", "")
            cols = ["run_id", *fields]
            self._db.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                (run_id, *fields.values()),
            )
        elif fields:
            sets = ", ".join(f"{k}=?" for k in fields)
            self._db.execute(f"UPDATE runs SET {sets} WHERE run_id=?",
                             (*fields.values(), run_id))

    def accept_run(self, run_id: str, fields: dict[str, Any],
                   command: tuple[str, dict[str, Any]] | None = None,
                   files: dict[str, bytes] | None = None,
                   claims: dict[str, Any] | None = None) -> None:
        """A submitted run's row, its first `files` and its `claims` (the stock it will
        take and the samples it takes, as JSON data; see the module's docstring) and, when
        a command asked for it, the reply to that command, in one transaction: once the run
        is in the index its command is known as answered, so a redelivered submit after a
        crash gets this reply and never makes a second run (and it all costs one commit)."""
        unknown = set(fields) - set(RUN_FIELDS)
        if unknown:
            raise KeyError(f"unknown run index columns: {', '.join(sorted(unknown))}")
        from labctl.store.journal import utc_iso

        cols = ["run_id", *fields]
        with self._lock, transaction(self._db):
            self._db.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                (run_id, *fields.values()))
            if command is not None:
                self._db.execute(
                    "INSERT OR IGNORE INTO commands (id, reply, created) VALUES (?, ?, ?)",
                    (command[0], json.dumps(command[1]), utc_iso()))
            if files is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO submissions (run_id, files) VALUES (?, ?)",
                    (run_id, json.dumps({k: v.decode("utf-8") for k, v in files.items()})))
            if claims:
                self._db.execute(
                    "INSERT OR REPLACE INTO submission_claims (run_id, claims) VALUES (?, ?)",
                    (run_id, json.dumps(claims)))

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _row(row) if row else None

    def list_runs(self, *, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        q = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if status:
            q += " WHERE status=?"
            args = (status,)
        q += " ORDER BY created DESC, run_id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(q, (*args, limit)).fetchall()
        return [_row(r) for r in rows]

    def submissions(self) -> dict[str, dict[str, bytes]]:
        """The first files of the runs accepted and not yet out of the queue, by run id."""
        with self._lock:
            rows = self._db.execute("SELECT run_id, files FROM submissions").fetchall()
        return {r["run_id"]: {k: v.encode("utf-8") for k, v in json.loads(r["files"]).items()}
                for r in rows}

    def submitted_claims(self) -> dict[str, dict[str, Any]]:
        """The claims (stock uses, sample inputs) kept with those first files, by run id."""
        with self._lock:
            rows = self._db.execute("SELECT run_id, claims FROM submission_claims").fetchall()
        return {r["run_id"]: json.loads(r["claims"]) for r in rows}

    def forget_submission(self, run_id: str) -> None:
        """Drop a run's first files and claims (its folder and claims are synced)."""
        with self._lock, transaction(self._db):
            self._forget_submission(run_id)

    def _forget_submission(self, run_id: str) -> None:
        self._db.execute("DELETE FROM submissions WHERE run_id=?", (run_id,))
        self._db.execute("DELETE FROM submission_claims WHERE run_id=?", (run_id,))

    # -- processed commands (MQTT exactly-once) ------------------------------------------
    def seen_command(self, command_id: str) -> dict[str, Any] | None:
        """The reply given to this command id before, or None if it is new."""
        with self._lock:
            row = self._db.execute("SELECT reply FROM commands WHERE id=?",
                                   (command_id,)).fetchone()
        return json.loads(row["reply"]) if row else None

    def remember_command(self, command_id: str, reply: dict[str, Any]) -> None:
        """Record the reply to a command id (the first reply wins)."""
        from labctl.store.journal import utc_iso

        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO commands (id, reply, created) VALUES (?, ?, ?)",
                (command_id, json.dumps(reply), utc_iso()),
            )


def _row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    if d.get("figures"):
        try:
            d["figures"] = json.loads(d["figures"])
        except json.JSONDecodeError:
            pass
    return d

"""`<data-dir>/samples.sqlite`: every vial a run puts material into becomes a sample with
an id (`S-<bench>-000001`), an optional barcode, a location (vessel, rack, position), its
composition as measured (grams per material, from the runs' journals), the run that made
it and its history (created, added, measured, moved, consumed, disposed — each with a run
id and a time).

Everything a run contributes is written keyed by (sample, run) or (sample, kind, run,
step), so reconciling a run's journal again after a kill or at its end changes nothing
twice. WAL mode, busy timeout, one BEGIN IMMEDIATE transaction per write: the CLI, the agent
and the TUI share it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labctl.errors import LabctlError
from labctl.store.journal import utc_iso
from labctl.store.sqlite_db import configure, sync_wal, transaction

FILENAME = "samples.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id          TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL,
    barcode     TEXT,
    vessel      TEXT NOT NULL,
    rack        TEXT,
    position    INTEGER,
    parent_run  TEXT NOT NULL,
    status      TEXT NOT NULL,
    created     TEXT NOT NULL,
    UNIQUE (parent_run, vessel)
);
CREATE TABLE IF NOT EXISTS contributions (
    sample_id   TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    grams       TEXT NOT NULL,
    PRIMARY KEY (sample_id, run_id)
);
CREATE TABLE IF NOT EXISTS history (
    sample_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    step        TEXT NOT NULL,
    t           TEXT NOT NULL,
    detail      TEXT,
    PRIMARY KEY (sample_id, kind, run_id, step)
);
CREATE TABLE IF NOT EXISTS run_inputs (
    run_id      TEXT NOT NULL,
    parameter   TEXT NOT NULL,
    sample_id   TEXT NOT NULL,
    PRIMARY KEY (run_id, parameter)
);
-- a submit's check asks for the live samples, a run's reconciliation for the live sample in
-- a vessel and the next number, a lookup may give a barcode: none of them may read every
-- sample the bench ever made
CREATE INDEX IF NOT EXISTS samples_status ON samples(status, seq);
CREATE INDEX IF NOT EXISTS samples_vessel ON samples(vessel, status);
CREATE INDEX IF NOT EXISTS samples_barcode ON samples(barcode);
CREATE INDEX IF NOT EXISTS samples_seq ON samples(seq);
"""

#: statuses of a sample still in its vial
LIVE = "live"


class SampleError(LabctlError):
    """An unknown sample, or one that is no longer there."""


class SampleStore:
    def __init__(self, path: str | Path, bench_id: str = "bench"):
        self.path = Path(path)
        if self.path.is_dir() or not self.path.suffix:
            self.path = self.path / FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.bench_id = bench_id
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=30000")
        configure(self._db)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, fn: Any, *, durable: bool = True) -> Any:
        with self._lock, transaction(self._db, durable=durable):
            return fn(self._db)

    def sync(self) -> None:
        """Make the commits written with `durable=False` durable (labctl.store.sqlite_db).
        Not under the store's lock: the fsync goes through a descriptor of its own, and the
        event loop's reads must not wait for the disk."""
        sync_wal(self.path)

    # -- what runs write ------------------------------------------------------------------
    def record_run(self, run_id: str, *, made: Mapping[str, Mapping[str, Any]],
                   added: Mapping[str, Mapping[str, float]],
                   events: list[tuple[str, str, str, str, dict[str, Any]]]) -> list[str]:
        """One reconciliation of a run: `made` vessel -> {rack, position, grams} for the
        vials the run filled (a sample each, created once), `added` sample id -> grams the
        run put into an existing sample, `events` (vessel-or-sample-id, kind, step, time,
        detail) for history. The ids of the samples this run made."""
        def do(db: sqlite3.Connection) -> list[str]:
            ids = []
            for vessel, info in made.items():
                row = db.execute("SELECT id FROM samples WHERE parent_run = ? AND vessel = ?",
                                 (run_id, vessel)).fetchone()
                if row is None:
                    seq = int(db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM samples")
                              .fetchone()[0])
                    sid = f"S-{self.bench_id}-{seq:06d}"
                    db.execute("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?)",
                               (sid, seq, None, vessel, info.get("rack"), info.get("position"),
                                run_id, LIVE, info.get("t") or utc_iso()))
                    db.execute("INSERT OR IGNORE INTO history VALUES (?,?,?,?,?,?)",
                               (sid, "created", run_id, info.get("step") or "",
                                info.get("t") or utc_iso(),
                                json.dumps({"vessel": vessel})))
                    # what was in the vial before is now part of this one
                    for old in db.execute("SELECT id FROM samples WHERE vessel = ? AND "
                                          "status = ? AND id != ?",
                                          (vessel, LIVE, sid)).fetchall():
                        db.execute("UPDATE samples SET status = 'consumed' WHERE id = ?",
                                   (old[0],))
                        db.execute("INSERT OR IGNORE INTO history VALUES (?,?,?,?,?,?)",
                                   (old[0], "consumed", run_id, info.get("step") or "",
                                    info.get("t") or utc_iso(), json.dumps({"into": sid})))
                else:
                    sid = row[0]
                ids.append(sid)
                db.execute("INSERT OR REPLACE INTO contributions VALUES (?,?,?)",
                           (sid, run_id, json.dumps(dict(info.get("grams") or {}))))
            for sid, grams in added.items():
                db.execute("INSERT OR REPLACE INTO contributions VALUES (?,?,?)",
                           (sid, run_id, json.dumps(dict(grams))))
            by_vessel = {v: s for v, s in zip(made, ids, strict=True)}
            for target, kind, step, t, detail in events:
                sid = by_vessel.get(target, target)
                db.execute("INSERT OR IGNORE INTO history VALUES (?,?,?,?,?,?)",
                           (sid, kind, run_id, step, t, json.dumps(detail)))
                if kind in ("disposed", "consumed"):
                    db.execute("UPDATE samples SET status = ? WHERE id = ?", (kind, sid))
            return ids

        return self._write(do)  # type: ignore[no-any-return]

    def note_inputs(self, run_id: str, inputs: Mapping[str, str], *,
                    durable: bool = True) -> None:
        """The samples a run takes as parameters (parameter -> sample id); `durable` as in
        InventoryStore.plan_run."""
        def do(db: sqlite3.Connection) -> None:
            for name, sid in inputs.items():
                db.execute("INSERT OR REPLACE INTO run_inputs VALUES (?,?,?)",
                           (run_id, name, sid))

        self._write(do, durable=durable)

    def set_barcode(self, sample_id: str, barcode: str | None) -> None:
        self.get(sample_id)
        self._write(lambda db: db.execute("UPDATE samples SET barcode = ? WHERE id = ?",
                                          (barcode, sample_id)))

    # -- reading --------------------------------------------------------------------------
    def get(self, sample_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute("SELECT * FROM samples WHERE id = ? OR barcode = ?",
                                   (sample_id, sample_id)).fetchone()
            if row is None:
                raise SampleError(f"no sample {sample_id!r} on this bench")
            out = dict(row)
            comp: dict[str, float] = {}
            for c in self._db.execute("SELECT grams FROM contributions WHERE sample_id = ? "
                                      "ORDER BY rowid", (out["id"],)):
                for m, g in json.loads(c[0]).items():
                    comp[m] = comp.get(m, 0.0) + float(g)
            out["composition_g"] = comp
            out["history"] = [
                {"kind": h["kind"], "run_id": h["run_id"], "step": h["step"] or None,
                 "t": h["t"], **(json.loads(h["detail"]) if h["detail"] else {})}
                for h in self._db.execute("SELECT * FROM history WHERE sample_id = ? "
                                          "ORDER BY t, rowid", (out["id"],))]
        return out

    def list_samples(self, *, status: str | None = None, limit: int = 200
                     ) -> list[dict[str, Any]]:
        q, args = "SELECT id FROM samples", ()
        if status:
            q, args = q + " WHERE status = ?", (status,)  # type: ignore[assignment]
        with self._lock:
            ids = [r[0] for r in self._db.execute(q + " ORDER BY seq DESC LIMIT ?",
                                                  (*args, limit))]
        return [self.get(i) for i in ids]

    def live_at(self) -> dict[str, str]:
        """vessel -> id of the live sample in it."""
        with self._lock:
            return {r["vessel"]: r["id"] for r in self._db.execute(
                "SELECT vessel, id FROM samples WHERE status = ?", (LIVE,))}

    def inputs_of(self, run_id: str) -> dict[str, str]:
        with self._lock:
            return {r["parameter"]: r["sample_id"] for r in self._db.execute(
                "SELECT parameter, sample_id FROM run_inputs WHERE run_id = ?", (run_id,))}

    def chain(self, sample_id: str, depth: int = 32) -> list[dict[str, Any]]:
        """The chain of origin: this sample, the run that made it, the samples that run
        took as parameters, the runs that made those... (breadth first, each once)."""
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        todo = [(sample_id, 0)]
        while todo:
            sid, level = todo.pop(0)
            if sid in seen or level > depth:
                continue
            seen.add(sid)
            s = self.get(sid)
            inputs = self.inputs_of(s["parent_run"])
            out.append({"sample_id": s["id"], "parent_run": s["parent_run"], "level": level,
                        "vessel": s["vessel"], "composition_g": s["composition_g"],
                        "inputs": inputs})
            todo += [(i, level + 1) for i in inputs.values()]
        return out

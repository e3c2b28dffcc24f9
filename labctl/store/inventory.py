"""`<data-dir>/inventory.sqlite`: what the bench's reservoirs and dispenser heads hold, and
why, across runs and processes.

Levels are per holding (a reservoir vessel, or a dispenser's head by its device name) and
material, liquids in litres and solids in grams, each with its lot and the date of the
refill that brought it. Every change is an event (seed from the config, refill, set, debit).
A run's debits are keyed by (run_id, step_id, attempt) — attempt is the journal `seq` of
the step_started line, unique across resumed sessions — and applied in the same
transaction as the level change, so replaying a journal twice (after a kill, at resume)
debits nothing twice.

SQLite in WAL mode with a busy timeout, each write one `BEGIN IMMEDIATE` transaction: the
CLI, the agent and the TUI may read and write at once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labctl.errors import LabctlError
from labctl.store.journal import utc_iso
from labctl.store.sqlite_db import configure, sync_wal, transaction

FILENAME = "inventory.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS levels (
    holding   TEXT NOT NULL,
    material  TEXT NOT NULL,
    amount    REAL NOT NULL,
    unit      TEXT NOT NULL,
    lot       TEXT,
    lot_date  TEXT,
    updated   TEXT NOT NULL,
    PRIMARY KEY (holding, material)
);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    t         TEXT NOT NULL,
    kind      TEXT NOT NULL,
    holding   TEXT NOT NULL,
    material  TEXT NOT NULL,
    amount    REAL NOT NULL,
    unit      TEXT NOT NULL,
    lot       TEXT,
    who       TEXT,
    run_id    TEXT,
    step_id   TEXT
);
CREATE TABLE IF NOT EXISTS debits (
    run_id    TEXT NOT NULL,
    step_id   TEXT NOT NULL,
    attempt   TEXT NOT NULL,
    holding   TEXT NOT NULL,
    material  TEXT NOT NULL,
    amount    REAL NOT NULL,
    unit      TEXT NOT NULL,
    t         TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, attempt, holding, material)
);
CREATE TABLE IF NOT EXISTS planned (
    run_id    TEXT NOT NULL,
    step_id   TEXT NOT NULL,
    holding   TEXT NOT NULL,
    material  TEXT NOT NULL,
    amount    REAL NOT NULL,
    unit      TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, holding, material)
);
"""


class InventoryError(LabctlError):
    """A refill or set that cannot be done (unknown vessel, over capacity, bad amount)."""


@dataclass(frozen=True)
class Level:
    holding: str
    material: str
    amount: float  # L for liquids, g for solids
    unit: str  # "L" or "g"
    lot: str | None
    lot_date: str | None
    updated: str

    def to_dict(self) -> dict[str, Any]:
        shown = self.amount * 1000 if self.unit == "L" else self.amount
        return {"holding": self.holding, "material": self.material, "amount": shown,
                "unit": "mL" if self.unit == "L" else "g", "lot": self.lot,
                "lot_date": self.lot_date, "updated": self.updated}


@dataclass(frozen=True)
class Debit:
    """What one attempt of one step took from one holding."""

    run_id: str
    step_id: str
    attempt: str
    holding: str
    material: str
    amount: float
    unit: str


class InventoryStore:
    """Thread-safe; one connection per store object (open one per process)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir() or not self.path.suffix:
            self.path = self.path / FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
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

    # -- transactions ---------------------------------------------------------------------
    def _write(self, fn: Any, *, durable: bool = True) -> Any:
        """Run fn(db) in one BEGIN IMMEDIATE transaction (one writer at a time)."""
        with self._lock, transaction(self._db, durable=durable):
            return fn(self._db)

    def sync(self) -> None:
        """Make the commits written with `durable=False` durable (labctl.store.sqlite_db).
        Not under the store's lock: the fsync goes through a descriptor of its own, and the
        event loop's reads must not wait for the disk."""
        sync_wal(self.path)

    # -- reading --------------------------------------------------------------------------
    def levels(self) -> list[Level]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM levels ORDER BY holding, material")
            return [Level(r["holding"], r["material"], float(r["amount"]), r["unit"], r["lot"],
                          r["lot_date"], r["updated"]) for r in rows.fetchall()]

    def level_map(self) -> dict[str, dict[str, tuple[float, str]]]:
        """holding -> material -> (amount, unit): what labctl.recipe.inventory takes."""
        with self._lock:
            return self._level_map()

    def _level_map(self) -> dict[str, dict[str, tuple[float, str]]]:
        """level_map(), the lock held."""
        out: dict[str, dict[str, tuple[float, str]]] = {}
        for r in self._db.execute("SELECT holding, material, amount, unit FROM levels "
                                  "ORDER BY holding, material"):
            out.setdefault(r["holding"], {})[r["material"]] = (float(r["amount"]), r["unit"])
        return out

    def events(self, holding: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = "SELECT * FROM events"
        args: tuple[Any, ...] = ()
        if holding:
            q, args = q + " WHERE holding = ?", (holding,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [dict(r) for r in rows]

    def debits(self, run_id: str | None = None) -> list[Debit]:
        q, args = "SELECT * FROM debits", ()
        if run_id:
            q, args = q + " WHERE run_id = ?", (run_id,)  # type: ignore[assignment]
        with self._lock:
            rows = self._db.execute(q + " ORDER BY t", args).fetchall()
        return [Debit(r["run_id"], r["step_id"], r["attempt"], r["holding"], r["material"],
                      float(r["amount"]), r["unit"]) for r in rows]

    # -- seeding from the bench config -----------------------------------------------------
    def seed(self, rows: Iterable[tuple[str, str, float, str, str | None]]) -> int:
        """Holdings the store does not know yet start from the config: (holding, material,
        amount, unit, lot). A holding already known is never reset (that is the point)."""
        now = utc_iso()

        def do(db: sqlite3.Connection) -> int:
            known = {r[0] for r in db.execute("SELECT DISTINCT holding FROM levels")}
            n = 0
            for holding, material, amount, unit, lot in rows:
                if holding in known:
                    continue
                db.execute("INSERT OR IGNORE INTO levels VALUES (?,?,?,?,?,?,?)",
                           (holding, material, amount, unit, lot, None, now))
                db.execute("INSERT INTO events (t, kind, holding, material, amount, unit, lot,"
                           " who) VALUES (?,?,?,?,?,?,?,?)",
                           (now, "seed", holding, material, amount, unit, lot, "config"))
                n += 1
            return n

        return int(self._write(do))

    # -- operator changes -----------------------------------------------------------------
    def refill(self, holding: str, amount: float, *, lot: str | None, who: str,
               material: str | None = None, capacity: float | None = None,
               replace: bool = False, unit: str | None = None) -> Level:
        """Add `amount` (L or g, in the holding's unit) of its material; a new lot and its
        date are recorded. `replace`: the amount is the new level (`set`)."""
        if not amount >= 0 or amount == float("inf"):
            raise InventoryError(f"{holding}: amount must be a finite amount ≥ 0")
        now = utc_iso()
        want_unit = unit

        def do(db: sqlite3.Connection) -> Level:
            rows = db.execute("SELECT * FROM levels WHERE holding = ?", (holding,)).fetchall()
            if material is None:
                mats = [r["material"] for r in rows if float(r["amount"]) > 0] or [
                    r["material"] for r in rows]
                if len(mats) != 1:
                    raise InventoryError(
                        f"{holding}: holds {', '.join(mats) or 'nothing the inventory knows'}"
                        "; name the material (labctl inventory set VESSEL MATERIAL AMOUNT)")
                mat = mats[0]
            else:
                mat = material
            row = next((r for r in rows if r["material"] == mat), None)
            if row is None and not replace:
                raise InventoryError(f"{holding}: holds no {mat}; use `set` for a new "
                                     "material")
            have_unit = row["unit"] if row is not None else None
            if have_unit is None:
                raise InventoryError(f"{holding}: unknown unit for {mat}")
            if want_unit is not None and want_unit != have_unit:
                raise InventoryError(f"{holding}: holds {mat} counted in "
                                     f"{'mL' if have_unit == 'L' else 'g'}, not in "
                                     f"{'mL' if want_unit == 'L' else 'g'}")
            unit = have_unit
            before = float(row["amount"]) if row is not None else 0.0
            new = amount if replace else before + amount
            others = sum(float(r["amount"]) for r in rows if r["material"] != mat
                         and r["unit"] == unit)
            if capacity is not None and unit == "L" and new + others > capacity * (1 + 1e-9):
                raise InventoryError(
                    f"{holding}: {new * 1000:g} mL of {mat} would not fit: it holds "
                    f"{(before + others) * 1000:g} mL in a {capacity * 1000:g} mL vessel")
            new_lot = lot if lot is not None else (row["lot"] if row is not None else None)
            lot_date = now if lot is not None or not replace else (
                row["lot_date"] if row is not None else None)
            db.execute("INSERT OR REPLACE INTO levels VALUES (?,?,?,?,?,?,?)",
                       (holding, mat, new, unit, new_lot, lot_date, now))
            db.execute("INSERT INTO events (t, kind, holding, material, amount, unit, lot, who)"
                       " VALUES (?,?,?,?,?,?,?,?)",
                       (now, "set" if replace else "refill", holding, mat, amount, unit,
                        new_lot, who))
            return Level(holding, mat, new, unit, new_lot, lot_date, now)

        return self._write(do)  # type: ignore[no-any-return]

    def set_level(self, holding: str, material: str, amount: float, unit: str, *,
                  lot: str | None, who: str, capacity: float | None = None) -> Level:
        """The level of one material in a holding is `amount` (a count after a check, a new
        bottle): creates the row if needed."""
        now = utc_iso()

        def ensure(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR IGNORE INTO levels VALUES (?,?,?,?,?,?,?)",
                       (holding, material, 0.0, unit, lot, None, now))

        self._write(ensure)
        return self.refill(holding, amount, lot=lot, who=who, material=material,
                           capacity=capacity, replace=True, unit=unit)

    # -- runs -----------------------------------------------------------------------------
    def plan_run(self, run_id: str, uses: Mapping[str, Iterable[tuple[str, str, float, str]]],
                 *, durable: bool = True) -> None:
        """Record what a submitted run will take, per step: (holding, material, amount,
        unit). Reservations of active runs are what a campaign check subtracts.
        `durable=False`: committed without its fsync, for a submit whose index commit holds
        the same uses (`sync` follows the reply; start-up puts back what a power cut
        took, labctl.bench.recovery)."""
        def do(db: sqlite3.Connection) -> None:
            for step_id, rows in uses.items():
                for holding, material, amount, unit in rows:
                    db.execute("INSERT OR REPLACE INTO planned VALUES (?,?,?,?,?,?)",
                               (run_id, step_id, holding, material, amount, unit))

        self._write(do, durable=durable)

    def planned(self, run_id: str) -> dict[str, list[tuple[str, str, float, str]]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM planned WHERE run_id = ?",
                                    (run_id,)).fetchall()
        out: dict[str, list[tuple[str, str, float, str]]] = {}
        for r in rows:
            out.setdefault(r["step_id"], []).append(
                (r["holding"], r["material"], float(r["amount"]), r["unit"]))
        return out

    def plan_view(self, run_ids: Iterable[str]
                  ) -> tuple[dict[str, dict[str, tuple[float, str]]],
                             dict[tuple[str, str], float]]:
        """`level_map()`, and what the given (queued or running) runs will still take (the
        planned uses of their steps with no debit yet; (holding, material) -> amount), as of
        one moment: one read transaction under one hold of the lock. Read apart, a debit
        applied between the two reads was counted neither in the levels nor as
        outstanding, and the stock looked larger by that step's use to a submit."""
        ids = list(run_ids)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                return self._level_map(), self._outstanding(ids)
            finally:
                self._db.execute("COMMIT")

    def _outstanding(self, ids: list[str]) -> dict[tuple[str, str], float]:
        """The outstanding uses of `plan_view`, the lock held."""
        out: dict[tuple[str, str], float] = {}
        for rid in ids:
            rows = self._db.execute(
                "SELECT holding, material, amount FROM planned p WHERE run_id = ? AND "
                "NOT EXISTS (SELECT 1 FROM debits d WHERE d.run_id = p.run_id AND "
                "d.step_id = p.step_id)", (rid,)).fetchall()
            for r in rows:
                key = (r["holding"], r["material"])
                out[key] = out.get(key, 0.0) + float(r["amount"])
        return out

    def apply_debits(self, debits: Iterable[Debit]) -> list[Debit]:
        """Apply each debit once: a key already recorded is skipped. The ones applied now."""
        now = utc_iso()
        todo = list(debits)

        def do(db: sqlite3.Connection) -> list[Debit]:
            applied = []
            for d in todo:
                cur = db.execute("INSERT OR IGNORE INTO debits VALUES (?,?,?,?,?,?,?,?)",
                                 (d.run_id, d.step_id, d.attempt, d.holding, d.material,
                                  d.amount, d.unit, now))
                if cur.rowcount != 1:
                    continue
                db.execute("UPDATE levels SET amount = amount - ?, updated = ? WHERE "
                           "holding = ? AND material = ?",
                           (d.amount, now, d.holding, d.material))
                db.execute("INSERT INTO events (t, kind, holding, material, amount, unit, who,"
                           " run_id, step_id) VALUES (?,?,?,?,?,?,?,?,?)",
                           (now, "debit", d.holding, d.material, d.amount, d.unit, "run",
                            d.run_id, d.step_id))
                applied.append(d)
            return applied

        return self._write(do) if todo else []  # type: ignore[no-any-return]

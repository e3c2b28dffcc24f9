"""A simulated bench keeps its world between processes, and the world follows the inventory.

On real hardware what is in a vial stays there when `labctl run` exits; an in-process
simulated world would start again from the config, so a sample made by one `labctl run`
would be gone for the next (and a reservoir would be full again whatever the inventory
says). The bench therefore saves its simulated world in its data dir
(`<data-dir>/sim_world.json`) when a run ends and when it closes, starts from it at the next
start, and sets the simulated reservoirs to the persisted inventory's levels (what the
operator last refilled or counted, less what runs took): the inventory is the truth an
operator keeps, the simulated world follows it. A run resumed after a kill starts from the
world it saved itself (labctl.simulation.WorldKeeper), which is newer for that run.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.simulation import can_save, read_world_file, world_document
from labctl.store.record import write_json_atomic

if TYPE_CHECKING:
    from labctl.bench.service import Bench

log = logging.getLogger("labctl.bench")

BENCH_WORLD = "sim_world.json"


def _path(bench: Bench) -> Path:
    return Path(bench.store.data_dir) / BENCH_WORLD


def load(bench: Bench) -> None:
    """Before the simulators start: begin from the world this bench saved last (unless a
    resumed run chose its own)."""
    if not bench.cfg.bench.simulate or bench.instruments.sim_state is not None:
        return
    doc = read_world_file(_path(bench))
    if doc is not None:
        bench.instruments.sim_state = doc.get("state")


class WorldSaver:
    """Saves of the world taken on the event loop (where the simulators change it) and
    written in worker threads: the newest snapshot taken is the one that stays on disk,
    whichever thread gets to write first."""

    def __init__(self, bench: Bench):
        self._bench = bench
        self._lock = threading.Lock()
        self._taken = 0
        self._written = 0

    def snapshot(self) -> tuple[int, dict[str, Any]] | None:
        """The world as it is now (None: not an in-process simulated bench)."""
        sim = getattr(self._bench.instruments, "simulation", None)
        if not self._bench.cfg.bench.simulate or not can_save(sim):
            return None
        self._taken += 1
        return self._taken, world_document(sim)

    def write(self, snap: tuple[int, dict[str, Any]] | None) -> None:
        """Write a snapshot unless a newer one is on disk already (in a worker thread)."""
        if snap is None:
            return
        seq, doc = snap
        with self._lock:
            if seq < self._written:
                return
            try:
                write_json_atomic(_path(self._bench), doc)
            except OSError as exc:  # the runs' own records matter more: say it, go on
                log.warning("could not save the simulated world: %s", exc)
                return
            self._written = seq


def trim_ledger(bench: Bench, keepers: list[Any]) -> None:
    """Let the simulated world drop the moves no running run's save still needs (those
    before its oldest step in progress), so a bench serving for weeks stays flat."""
    sim: Any = getattr(bench.instruments, "simulation", None)
    if not callable(getattr(sim, "trim_ledger", None)):
        return
    marks = [m for k in keepers if k is not None for m in k.marks()]
    sim.trim_ledger(min(marks, default=sim.ledger_length()))


def _world(bench: Bench) -> Any:
    sim = getattr(bench.instruments, "simulation", None)
    world = getattr(sim, "world", None)
    return world if callable(getattr(world, "set_contents", None)) else None


def _grams(world: Any, material: str, amount: float, unit: str) -> float:
    if unit == "g":
        return amount
    m = world.materials.get(material)
    density = float(getattr(m, "density_g_ml", 1.0) or 1.0)
    return amount * 1000.0 * density


def follow_inventory(bench: Bench, only: str | None = None) -> None:
    """Set each simulated reservoir (or just `only`) to the inventory's levels."""
    world = _world(bench)
    if world is None or not bench.cfg.bench.simulate:
        return
    by_holding: dict[str, dict[str, float]] = defaultdict(dict)
    for lv in bench.stock.store.levels():
        if only is not None and lv.holding != only:
            continue
        vessel = bench.cfg.vessels.get(lv.holding)
        if vessel is None or vessel.kind != "reservoir":
            continue  # dispenser heads live in their simulator, vials in the samples
        by_holding[lv.holding][lv.material] = _grams(world, lv.material, lv.amount, lv.unit)
    for holding, contents in by_holding.items():
        try:
            world.set_contents(holding, contents)
        except Exception as exc:  # a vessel the simulated world does not have
            log.warning("simulated %s does not follow the inventory: %s", holding, exc)


def levels_of(bench: Bench, holding: str) -> dict[str, tuple[float, str]]:
    return {lv.material: (lv.amount, lv.unit) for lv in bench.stock.store.levels()
            if lv.holding == holding}


def follow_refill(bench: Bench, holding: str, before: dict[str, tuple[float, str]]) -> None:
    """An operator's refill or count while the bench runs: the simulated reservoir gains
    what the inventory gained (a run pumping from it keeps what it already drew)."""
    world = _world(bench)
    vessel = bench.cfg.vessels.get(holding)
    if world is None or vessel is None or vessel.kind != "reservoir":
        return
    try:
        contents = dict(world.vessel(holding).contents_g)
        for material, (amount, unit) in levels_of(bench, holding).items():
            old = before.get(material, (0.0, unit))[0]
            grams = _grams(world, material, amount - old, unit)
            contents[material] = max(0.0, contents.get(material, 0.0) + grams)
        world.set_contents(holding, contents)
    except Exception as exc:
        log.warning("simulated %s does not follow the refill: %s", holding, exc)

"""Does a step of a long run cost what a step of a short one does? (prints figures, asserts
nothing)

A recipe that loops a dose N times (select the vial, transfer 0.1 mL of EC into it, draw it
back, select waste, dispense: 5 steps an iteration, each taking stock or moving material)
runs on the simulated bench (config/sim.toml, in this process, time scale 10000) for a few
N. Each step that takes stock or moves material makes the bench read the run's journal
(stock debits, samples); a read that parses every line again makes a run of N steps cost
N². Printed per N: wall time per step, the ratio to the shortest run's, and the share of
the wall time spent in `RunRecord.events` (timed by a wrapper around it). Medians of
--runs runs.

    .venv/bin/python bench/long_recipe.py [--cycles 20 100 300] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labctl.bench import Bench  # noqa: E402
from labctl.config import load_config  # noqa: E402
from labctl.store.record import RunRecord  # noqa: E402

READS = {"calls": 0, "s": 0.0}
_events = RunRecord.events


def _timed_events(self: RunRecord) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    try:
        return _events(self)
    finally:
        READS["s"] += time.perf_counter() - t0
        READS["calls"] += 1


RunRecord.events = _timed_events  # type: ignore[method-assign]


def looped_recipe(cycles: int) -> dict[str, Any]:
    return {
        "schema": "labctl.recipe/1", "name": "bench_long", "version": "1",
        "description": "a dose in and out of the cell vial, looped",
        "materials": {"EC": {"name": "ethylene carbonate", "location": "res_ec"}},
        "steps": [
            {"id": "init_ec", "device": "pump_ec", "action": "initialize", "idempotent": True},
            {"id": "init_dmc", "device": "pump_dmc", "action": "initialize",
             "idempotent": True},
            {"id": "dose", "repeat": cycles, "var": "i", "steps": [
                {"id": "to_vial", "device": "sel_valve", "action": "move",
                 "args": {"position": "cell_vial"}},
                {"id": "fill", "device": "pump_ec", "action": "transfer",
                 "args": {"volume": "0.1 mL", "from": "res_ec", "to": "cell_vial",
                          "flow": "20 mL/min"}},
                {"id": "draw", "device": "pump_dmc", "action": "aspirate",
                 "args": {"volume": "0.1 mL", "from": "cell_vial", "flow": "15 mL/min"}},
                {"id": "to_waste", "device": "sel_valve", "action": "move",
                 "args": {"position": "waste"}},
                {"id": "out", "device": "pump_dmc", "action": "dispense",
                 "args": {"volume": "0.1 mL", "to": "waste", "flow": "20 mL/min"}}]}]}


async def one(cycles: int) -> tuple[float, float]:
    """Wall seconds per step of one run, and the share of it spent reading the journal."""
    cfg = load_config(ROOT / "config" / "sim.toml")
    READS.update(calls=0, s=0.0)
    async with Bench(cfg, data_dir=Path(tempfile.mkdtemp()) / "runs",
                     time_scale=10000) as bench:
        t0 = time.perf_counter()
        run_id = await bench.submit(looped_recipe(cycles), {})
        result = await bench.wait(run_id)
        wall = time.perf_counter() - t0
    if result["status"] != "completed":
        raise SystemExit(f"{cycles} cycles: {result['status']} {result.get('errors')}")
    return wall / (2 + 5 * cycles), READS["s"] / wall


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, nargs="+", default=[20, 100, 300])
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the watchdogs' "not armed at this time scale"
    base: float | None = None
    for cycles in args.cycles:
        figs = [await one(cycles) for _ in range(args.runs)]
        per_step = statistics.median(f[0] for f in figs)
        share = statistics.median(f[1] for f in figs)
        base = base or per_step
        print(f"{2 + 5 * cycles:5d} steps: {per_step * 1e3:6.2f} ms a step "
              f"({per_step / base:4.2f}x the {2 + 5 * args.cycles[0]}-step run's), "
              f"{share * 100:3.0f} % of the wall time reading the journal")


if __name__ == "__main__":
    asyncio.run(main())

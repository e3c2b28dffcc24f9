"""Makespan of a mixed campaign on the simulated bench (config/sim.toml): the same runs one
after the other (concurrency 1) and as concurrently as the bench allows (concurrency N),
against the bottleneck bound (the busiest device's total busy time, from the runs' own
journals). The runs use different work positions: stirring on the hotplate (cell_vial),
holding the heated block (coat_vial), feeding TEOS into coat_vial, initialising pumps.
Prints medians of REPEAT campaigns; asserts nothing (timing belongs here, not in tests).

    .venv/bin/python bench/concurrent_runs.py [--time-scale 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from labctl.bench import Bench
from labctl.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def recipe(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema": "labctl.recipe/1", "name": name, "version": "1",
            "description": "concurrency benchmark", "steps": steps}


CAMPAIGN = [
    recipe("stir", [{"id": "mix", "device": "hotplate", "action": "stir",
                     "args": {"speed": "400 rpm", "duration": "10 min"}}]),
    recipe("heat", [{"id": "h", "device": "block_heater", "action": "hold",
                     "args": {"temperature": "30 degC", "duration": "10 min"}}]),
    recipe("stir", [{"id": "mix", "device": "hotplate", "action": "stir",
                     "args": {"speed": "400 rpm", "duration": "10 min"}}]),
    recipe("pumps", [{"id": "a", "device": "pump_ec", "action": "initialize"},
                     {"id": "b", "device": "pump_dmc", "action": "initialize"}]),
    recipe("heat", [{"id": "h", "device": "block_heater", "action": "hold",
                     "args": {"temperature": "30 degC", "duration": "10 min"}}]),
]


async def campaign(concurrency: int, time_scale: float) -> tuple[float, float]:
    """(makespan wall s, bottleneck bound wall s) of one campaign."""
    cfg = load_config(ROOT / "config" / "sim.toml")
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(cfg, data_dir=Path(tmp), time_scale=time_scale,
                      max_concurrent=concurrency)
        await bench.start()
        try:
            t0 = time.monotonic()
            ids = [await bench.submit(r) for r in CAMPAIGN]
            for rid in ids:
                await bench.wait(rid)
            makespan = time.monotonic() - t0
            busy: dict[str, float] = defaultdict(float)
            for rid in ids:
                started: dict[str, tuple[float, str]] = {}
                for ev in bench.store.open(rid).events():
                    if ev.get("event") == "step_started" and ev.get("device"):
                        started[ev["step"]] = (float(ev["ts"]), ev["device"])
                    elif ev.get("event") == "step_finished" and ev.get("step") in started:
                        t, dev = started.pop(ev["step"])
                        busy[dev] += float(ev["ts"]) - t
        finally:
            await bench.close()
    return makespan, max(busy.values())


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--time-scale", type=float, default=200.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    rows = {}
    for n in (1, args.concurrency):
        runs = [await campaign(n, args.time_scale) for _ in range(args.repeat)]
        rows[n] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    seq, par = rows[1][0], rows[args.concurrency][0]
    bound = rows[args.concurrency][1]
    print(f"{len(CAMPAIGN)} runs, time scale {args.time_scale:g}, median of {args.repeat}")
    print(f"sequential (concurrency 1)     makespan {seq:7.2f} wall s")
    print(f"concurrent (concurrency {args.concurrency})     makespan {par:7.2f} wall s")
    print(f"bottleneck bound (busiest device)        {bound:7.2f} wall s")
    print(f"speed-up {seq / par:.2f}x; makespan / bound {par / bound:.2f}")


if __name__ == "__main__":
    asyncio.run(main())

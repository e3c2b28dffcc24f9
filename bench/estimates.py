"""Planned vs simulated duration of every shipped recipe: the plan's estimate against what
the simulated bench takes (simulated seconds, from the run's journal: wall time between
events times the time scale). Prints a table recipe | planned s | simulated s | ratio,
the median of RUNS runs per recipe, and the steps whose estimate is furthest off.
Asserts nothing (the machine is shared; serial exchanges take wall time that the scaled
clock counts, so a loaded machine makes short steps look longer)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from labctl.bench import Bench
from labctl.config import load_config

ROOT = Path(__file__).resolve().parent.parent
RUNS = 3


def _bench_cfg() -> Any:
    cfg = load_config(ROOT / "config" / "sim.toml")
    for d in cfg.devices.values():
        d.enabled = True
    return cfg


async def simulate(path: Path, time_scale: float) -> tuple[Any, float, str, dict[str, float]]:
    """Run one recipe on a fresh simulated bench: (its plan, simulated s, status, per-step
    simulated s)."""
    cfg = _bench_cfg()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(cfg, data_dir=Path(tmp), time_scale=time_scale)
        await bench.start()
        try:
            run_id = await bench.submit(path, {})
            plan = bench.tickets[run_id].plan  # planned in this process, as labctl run does
            result = await bench.wait(run_id)
            events = list(bench.store.open(run_id).events())
        finally:
            await bench.close()
    scale = time_scale
    started: dict[str, float] = {}
    steps: dict[str, float] = {}
    first = last = None
    for ev in events:
        ts = ev.get("ts")
        if ev.get("event") == "transition" and ev.get("dest") == "running" and first is None:
            first = ts
        if ev.get("event") == "step_started" and ev.get("kind") in ("action", "wait",
                                                                    "analysis"):
            started[str(ev["step"])] = float(ts)
            first = first if first is not None else ts
        elif ev.get("event") == "step_finished" and str(ev.get("step")) in started:
            steps[str(ev["step"])] = (float(ts) - started.pop(str(ev["step"]))) * scale
            last = ts
    total = (float(last) - float(first)) * scale if first is not None and last else 0.0
    return plan, total, str(result.get("status")), steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--time-scale", type=float, default=None,
                    help="default: the bench config's (config/sim.toml)")
    ap.add_argument("--worst", type=int, default=3, help="steps furthest off, per recipe")
    ap.add_argument("recipes", nargs="*", type=Path)
    ns = ap.parse_args()
    cfg = _bench_cfg()
    scale = ns.time_scale or float(cfg.bench.time_scale or 1)
    paths = ns.recipes or sorted((ROOT / "recipes").glob("*.json"))
    rows = []
    notes = []
    for path in paths:
        planned, totals, ratios, statuses = [], [], [], set()
        per_step: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for _ in range(ns.runs):
            plan, total, status, steps = asyncio.run(simulate(path, scale))
            est = {s.id: s.estimated_s for s in plan.leaves()}
            planned.append(plan.estimated_s)
            totals.append(total)
            ratios.append(plan.estimated_s / total if total else 0.0)
            statuses.add(status)
            for k, v in steps.items():
                per_step[k].append((est.get(k, 0.0), v))
        rows.append((path.stem, statistics.median(planned), statistics.median(totals),
                     statistics.median(ratios), ",".join(sorted(statuses))))
        off = sorted(((abs(statistics.median(s for _, s in v) - statistics.median(
            e for e, _ in v)), k, statistics.median(e for e, _ in v),
            statistics.median(s for _, s in v)) for k, v in per_step.items()),
            reverse=True)[:ns.worst]
        for _, k, e, s in off:
            notes.append(f"  {path.stem}: {k}: planned {e:.1f} s, simulated {s:.1f} s")
    print(f"time scale {scale:g}, median of {ns.runs} runs")
    print(f"{'recipe':26s} | {'planned s':>9s} | {'simulated s':>11s} | {'ratio':>5s} | status")
    for name, p, s, r, st in rows:
        print(f"{name:26s} | {p:9.1f} | {s:11.1f} | {r:5.2f} | {st}")
    print("steps furthest off:")
    print("\n".join(notes))


if __name__ == "__main__":
    main()

"""A campaign of 8 conductivity experiments on the simulated high-throughput bench
(recipes/conductivity_screen.json, one formulation per block vial a1..a8): the sequential
time, the bottleneck bound, and (with --measure) the measured makespan.

From the plans alone (simulated seconds, the planner's estimates):
- sequential: the sum of the 8 plans' estimated times (one run after the other);
- bottleneck bound: the busiest device's total busy time over the campaign (no schedule
  can beat it: that device does its steps one at a time). A routing device (the selector
  valve) is counted as held from the step that sets its route to the last step that
  flows through it, since no other run may turn it meanwhile. Steps that a multi-vessel
  device (a vial block, params.vessels) runs at one setpoint for several runs at once are
  counted once (the longest), as the block stirs all its vials together;
- bound with head and tail: the bottleneck's busy time plus the shortest time any run
  spends before its first use of that device and after its last (the bottleneck cannot
  start before one run reaches it, and one run still has work after it).

--measure submits the 8 runs to one simulated bench and measures the makespan (first
start to last end, from the journals). On a bench that runs one run at a time this is the
measured sequential time; once concurrent runs land (labctl.bench `max_concurrent`) the
same function measures the concurrent makespan: see `measure_makespan`. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl.config import BenchConfig, load_config
from labctl.estimates import ANALYSIS_IMPORTS, at_time_scale, clock_per_wall_s
from labctl.recipe import Plan, build_plan

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "conductivity_screen.json"

#: 8 formulations (one per block vial): LiPF6 molality and EC volume fraction vary, the
#: temperature is one for all (the block has one setpoint)
FORMULATIONS: list[dict[str, Any]] = [
    {"vial": f"a{i + 1}", "salt_molality": f"{m} mol/kg", "ec_fraction": ec,
     "temperature": "25 degC"}
    for i, (m, ec) in enumerate([(0.6, 0.3), (0.8, 0.4), (1.0, 0.5), (1.2, 0.6),
                                 (1.4, 0.7), (0.8, 0.6), (1.0, 0.3), (1.2, 0.5)])
]


@dataclass
class Figures:
    sequential_s: float
    busy_s: dict[str, float]
    bottleneck: str
    head_s: float
    tail_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def bound_s(self) -> float:
        return self.busy_s[self.bottleneck]

    @property
    def bound_with_ends_s(self) -> float:
        return self.bound_s + self.head_s + self.tail_s


def plans(cfg: BenchConfig, formulations: list[dict[str, Any]]) -> list[Plan]:
    return [build_plan(RECIPE, dict(f), cfg) for f in formulations]


def _routers(cfg: BenchConfig) -> set[str]:
    return {name for name, d in cfg.devices.items()
            if isinstance(d.params.get("port_map"), dict) and d.driver.startswith("vici")}


def _uses_route(step: Any, router: str) -> bool:
    return any(f"@{router}" in (e.get("source"), e.get("destination"))
               for e in step.effects) or any(
        v == f"@{router}" for v in step.args.values() if isinstance(v, str))


def device_intervals(cfg: BenchConfig, plan: Plan) -> dict[str, list[tuple[float, float,
                                                                         str | None]]]:
    """Per device, the (start, end, shared key) offsets in this run (leaves one after the
    other, as the executor runs a sequence) during which the run holds it. Analysis steps
    hold the host, not a device ("analysis")."""
    leaves = list(plan.leaves())
    starts, t = [], 0.0
    for s in leaves:
        starts.append(t)
        t += s.estimated_s
    out: dict[str, list[tuple[float, float, str | None]]] = defaultdict(list)
    for s, t0 in zip(leaves, starts, strict=True):
        name = s.device or ("analysis" if s.kind == "analysis" else None)
        if name is None:
            continue
        block = cfg.devices[name].params.get("vessels") if name in cfg.devices else None
        key = None
        if isinstance(block, list) and s.action in ("set", "stir"):
            key = repr(sorted((k, v) for k, v in s.args.items() if isinstance(v, (int, float))))
        out[name].append((t0, t0 + s.estimated_s, key))
    for router in _routers(cfg):
        first = next((i for i, s in enumerate(leaves) if s.device == router), None)
        last = max((i for i, s in enumerate(leaves) if _uses_route(s, router)), default=None)
        if first is not None and last is not None and last >= first:
            out[router] = [(starts[first], starts[last] + leaves[last].estimated_s, None)]
    return out


def figures(cfg: BenchConfig, formulations: list[dict[str, Any]]) -> Figures:
    ps = plans(cfg, formulations)
    sequential = sum(p.estimated_s for p in ps)
    busy: dict[str, float] = defaultdict(float)
    shared: dict[tuple[str, str], float] = {}
    per_run = [device_intervals(cfg, p) for p in ps]
    for intervals in per_run:
        for dev, spans in intervals.items():
            for t0, t1, key in spans:
                if key is None:
                    busy[dev] += t1 - t0
                else:  # one setpoint for the block: runs share it
                    shared[(dev, key)] = max(shared.get((dev, key), 0.0), t1 - t0)
    for (dev, _key), d in shared.items():
        busy[dev] += d
    devices = {d: v for d, v in busy.items() if d != "analysis"}
    bottleneck = max(devices, key=lambda d: devices[d])
    head = min(min(t0 for t0, _, _ in r[bottleneck]) for r in per_run if r.get(bottleneck))
    tail = min(p.estimated_s - max(t1 for _, t1, _ in r[bottleneck])
               for p, r in zip(ps, per_run, strict=True) if r.get(bottleneck))
    notes = []
    if busy.get("analysis"):
        notes.append(f"analyses: {busy['analysis']:.0f} s in all, on the host (wall time "
                     f"x time scale {cfg.bench.time_scale:g}); they hold no device")
        lib = ANALYSIS_IMPORTS.get("ionic_conductivity")
        if lib is not None and lib[0] not in sys.modules:
            notes.append(f"each plan counts the import of {lib[0]} ({lib[1]:g} wall s = "
                         f"{lib[1] * clock_per_wall_s(cfg):.0f} s); one bench process pays it "
                         f"once, so a measured sequential queue is ~"
                         f"{(len(ps) - 1) * lib[1] * clock_per_wall_s(cfg):.0f} s shorter")
    return Figures(sequential, dict(busy), bottleneck, head, tail, notes)


def _union_s(spans: list[tuple[float, float]]) -> float:
    """Length of the union of intervals (a shared vial block stirring several runs' vials
    at once is busy once, not once per run)."""
    total, cur_a, cur_b = 0.0, None, None
    for a, b in sorted(spans):
        if cur_b is None or a > cur_b:
            if cur_b is not None and cur_a is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_a is not None and cur_b is not None:
        total += cur_b - cur_a
    return total


async def measure_makespan(cfg: BenchConfig, formulations: list[dict[str, Any]],
                           time_scale: float, concurrency: int) -> dict[str, Any]:
    """Submit every formulation to one simulated bench running up to `concurrency` runs at
    once, wait for all; the makespan in simulated seconds (first step start to last step
    end, from the journals' wall timestamps x time scale), each device's measured busy time
    (union of the intervals its steps ran, from the journals) and each run's result. The
    formulations leave `vial` out: the bench assigns each run a free vial of the block."""
    from labctl.bench import Bench

    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(cfg, data_dir=Path(tmp), time_scale=time_scale,
                      max_concurrent=concurrency)
        await bench.start()
        try:
            ids = [await bench.submit(RECIPE, {k: v for k, v in f.items() if k != "vial"})
                   for f in formulations]
            results = [await bench.wait(i) for i in ids]
            first = last = None
            spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
            vials = []
            for run_id in ids:
                plan = bench.tickets[run_id].plan
                vials.append(plan.parameters_typed.get("vial", {}).get("value"))
                device = {leaf.id: leaf.device for leaf in plan.leaves()}
                started: dict[str, float] = {}
                for ev in bench.store.open(run_id).events():
                    kind, step = ev.get("event"), ev.get("step")
                    if kind not in ("step_started", "step_finished", "step_failed"):
                        continue
                    ts = float(ev["ts"]) * time_scale
                    first = ts if first is None else min(first, ts)
                    last = ts if last is None else max(last, ts)
                    if kind == "step_started":
                        started[str(step)] = ts
                    elif str(step) in started and device.get(str(step)):
                        spans[str(device[str(step)])].append((started.pop(str(step)), ts))
        finally:
            await bench.close()
    return {"makespan_s": (last or 0.0) - (first or 0.0),
            "busy_s": {d: _union_s(v) for d, v in spans.items()},
            "statuses": [r.get("status") for r in results], "vials": vials,
            "conductivity_mS_cm": [next((f["value"] for f in r.get("figures_of_merit", [])
                                         if f.get("name") == "ionic_conductivity_mS_cm"),
                                        None) for r in results]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-scale", type=float, default=None,
                    help="default: the bench config's (config/sim.toml)")
    ap.add_argument("--measure", action="store_true",
                    help="also run the campaign on the simulated bench, one run at a time "
                         "and concurrently, and measure both")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="campaigns measured (medians)")
    ns = ap.parse_args()
    cfg = load_config(ROOT / "config" / "sim.toml")
    scale = ns.time_scale or float(cfg.bench.time_scale or 1)
    cfg = at_time_scale(cfg, scale)
    f = figures(cfg, FORMULATIONS)
    print(f"campaign: {len(FORMULATIONS)} x {RECIPE.name}, time scale {scale:g}")
    print(f"{'device':16s} | planned busy s")
    for dev, s in sorted(f.busy_s.items(), key=lambda kv: -kv[1]):
        print(f"{dev:16s} | {s:8.0f}")
    print(f"sequential (sum of plans)       {f.sequential_s:8.0f} s")
    print(f"bottleneck bound ({f.bottleneck})  {f.bound_s:8.0f} s  "
          f"(sequential / bound = {f.sequential_s / f.bound_s:.2f})")
    print(f"bound with head {f.head_s:.0f} s and tail {f.tail_s:.0f} s  "
          f"{f.bound_with_ends_s:8.0f} s")
    for n in f.notes:
        print(f"note: {n}")
    if not ns.measure:
        return
    seq, con = [], []
    for i in range(ns.repeat):
        seq.append(asyncio.run(measure_makespan(cfg, FORMULATIONS, scale, 1)))
        con.append(asyncio.run(measure_makespan(cfg, FORMULATIONS, scale, ns.concurrency)))
        print(f"trial {i + 1}: sequential {seq[-1]['makespan_s']:.0f} s, concurrent "
              f"{con[-1]['makespan_s']:.0f} s, statuses {set(seq[-1]['statuses'])} "
              f"{set(con[-1]['statuses'])}", flush=True)
    med = statistics.median
    seq_s = med(m["makespan_s"] for m in seq)
    con_s = med(m["makespan_s"] for m in con)
    devices = sorted({d for m in con for d in m["busy_s"]})
    busy = {d: med(m["busy_s"].get(d, 0.0) for m in con) for d in devices}
    top = max(busy, key=lambda d: busy[d])
    exclusive = {d: b for d, b in busy.items() if d != "block_stirrer"}
    top_ex = max(exclusive, key=lambda d: exclusive[d])
    print(f"\nmeasured (medians of {ns.repeat}; simulated s)")
    print(f"{'device':16s} | busy s (concurrent campaign)")
    for d in sorted(busy, key=lambda d: -busy[d]):
        print(f"{d:16s} | {busy[d]:8.0f}")
    print(f"sequential queue (concurrency 1)  {seq_s:8.0f} s")
    print(f"concurrent (up to {ns.concurrency} at once)   {con_s:8.0f} s  "
          f"= {seq_s / con_s:.2f}x faster than sequential")
    print(f"bound: busiest device {top} {busy[top]:.0f} s -> makespan {con_s / busy[top]:.2f}x "
          f"the bound")
    print(f"bound: busiest one-at-a-time device {top_ex} {busy[top_ex]:.0f} s -> makespan "
          f"{con_s / busy[top_ex]:.2f}x that bound")
    print(f"vials assigned {con[-1]['vials']}")
    print("conductivity mS/cm " + ", ".join(
        f"{c:.2f}" if c is not None else "-" for c in con[-1]["conductivity_mS_cm"]))


if __name__ == "__main__":
    main()

"""Recipe validation and planning speed: how long `build_plan` takes for each example
recipe on the simulated bench, and for a large looped recipe. Prints figures; asserts
nothing (the machine is shared)."""

from __future__ import annotations

import statistics
import time
import tomllib
from pathlib import Path

from labctl.config import parse_config
from labctl.recipe import build_plan

ROOT = Path(__file__).resolve().parent.parent
RUNS = 30


def _bench_cfg():  # type: ignore[no-untyped-def]
    # the bench once every driver is enabled (a loaded config's devices are frozen)
    text = (ROOT / "config" / "sim.toml").read_text(encoding="utf-8")
    return parse_config(tomllib.loads(text.replace("enabled = false", "enabled = true")),
                        str(ROOT / "config" / "sim.toml"))


def measure(source: object, runs: int = RUNS) -> tuple[float, float, int]:
    cfg = _bench_cfg()
    times = []
    plan = None
    for _ in range(runs):
        t0 = time.perf_counter()
        plan = build_plan(source, {}, cfg, base_dir=ROOT / "recipes")  # type: ignore[arg-type]
        times.append(time.perf_counter() - t0)
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    assert plan is not None
    return statistics.median(times), p99, sum(1 for _ in plan.leaves())


def main() -> None:
    print(f"{'recipe':34s} {'steps':>6s} {'median ms':>10s} {'p99 ms':>8s}")
    for path in sorted((ROOT / "recipes").glob("*.json")):
        med, p99, n = measure(path)
        print(f"{path.name:34s} {n:6d} {med * 1e3:10.2f} {p99 * 1e3:8.2f}")
    big = {"schema": "labctl.recipe/1", "name": "big", "steps": [
        {"id": "init", "device": "pump_ec", "action": "initialize"},
        {"id": "loop", "repeat": 2500, "var": "k", "steps": [
            {"id": "to_vial", "device": "sel_valve", "action": "move",
             "args": {"position": "cell_vial"}},
            {"id": "in", "device": "pump_ec", "action": "transfer",
             "args": {"volume": "${0.001 mL * (k + 1) / (k + 1)}", "from": "res_ec",
                      "to": "cell_vial"}},
            {"id": "to_waste", "device": "sel_valve", "action": "move",
             "args": {"position": "waste"}},
            {"id": "wait", "wait": "1 s"}]}]}
    med, p99, n = measure(big, runs=3)
    print(f"{'synthetic loop (repeat 2500 x 4)':34s} {n:6d} {med * 1e3:10.2f} {p99 * 1e3:8.2f}")
    print(f"  per planned step: {med / n * 1e6:.0f} µs")


if __name__ == "__main__":
    main()

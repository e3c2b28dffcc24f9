"""Executor overhead and simulated-hour wall time. Prints figures; asserts nothing.

1. Overhead per step: 1,000 trivial steps (a valve move on an in-process device that answers
   at once) through the executor — journal with fsync included — against awaiting the same
   device method 1,000 times directly. Journal on the data disk, and on tmpfs (/dev/shm) to
   show how much of it is the fsync. Target: ≤ 0.2 ms of overhead per step.
2. Wall time of a recipe of one simulated hour on the simulated bench (config/sim.toml,
   real drivers over ptys) at time_scale 1000. Target: ≤ 5 s.
Medians of several runs (p99 of the per-step figures where it applies).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labctl.actions import get_action  # noqa: E402
from labctl.capabilities.valve import Valve  # noqa: E402
from labctl.clock import ScaledClock  # noqa: E402
from labctl.device import DeviceInfo, DeviceSpec, DeviceState, DeviceStatus  # noqa: E402
from labctl.executor import Executor  # noqa: E402
from labctl.recipe.plan import Plan, PlannedStep  # noqa: E402
from labctl.run_machine import RunMachine  # noqa: E402
from labctl.store import RunRecord  # noqa: E402

N_STEPS = 1000
RUNS = 7
SHM_AVAILABLE = Path("/dev/shm").is_dir()


class InstantValve(Valve):
    """An in-process valve that moves at once: the executor's cost is all that is left."""

    protocol: ClassVar[str] = "none (in-process)"

    def __init__(self, name: str = "valve"):
        super().__init__(DeviceSpec(name=name, driver="instant-valve",
                                    params={"positions": 6}))
        self._pos = 1

    @property
    def positions(self) -> int:
        return 6

    async def connect(self) -> None:
        return None

    async def identify(self) -> DeviceInfo:
        return DeviceInfo(model="instant")

    async def status(self) -> DeviceStatus:
        return DeviceStatus(DeviceState.IDLE, {"position": self._pos})

    async def move(self, position: int) -> None:
        self._pos = position

    async def position(self) -> int:
        return self._pos

    async def home(self) -> None:
        self._pos = 1


def bench_plan(args: list[dict[str, Any]]) -> Plan:
    """A plan of `move` steps, one per args dict, in the planner's own types."""
    steps = [PlannedStep(id=f"s{i}", path=f"steps[{i}]", kind="action", device="valve",
                         action="move", args=a, idempotent=True)
             for i, a in enumerate(args)]
    return Plan(name="bench", version="1", description="", recipe={"name": "bench"},
                parameters={}, sha256="0" * 64, steps=steps, estimated_s=0.0, materials=[],
                material_effects=[])


async def direct(valve: InstantValve) -> float:
    t0 = time.perf_counter()
    for i in range(N_STEPS):
        await valve.move(i % 6 + 1)
    return (time.perf_counter() - t0) / N_STEPS


async def through_executor(valve: InstantValve, data_dir: Path) -> float:
    plan = bench_plan([{"position": i % 6 + 1} for i in range(N_STEPS)])
    rec = RunRecord.create(data_dir, f"bench-{time.monotonic_ns()}")
    machine = RunMachine(journal=lambda info: rec.journal.append("transition", **info))
    await machine.request("validate")
    await machine.request("validated")
    spec = get_action(valve, "move")
    ex = Executor(plan, {"valve": valve}, clock=ScaledClock(1000), record=rec, machine=machine,
                  actions=lambda dev, name: spec)
    t0 = time.perf_counter()
    state = await ex.execute()
    dt = (time.perf_counter() - t0) / N_STEPS
    rec.close()
    assert str(state) == "completed", state
    return dt


async def overhead(data_dir: Path, label: str) -> None:
    valve = InstantValve()
    d, e = [], []
    for _ in range(RUNS):
        d.append(await direct(valve))
        e.append(await through_executor(valve, data_dir))
    md, me = statistics.median(d), statistics.median(e)
    print(f"  journal on {label:<28} direct {md * 1e6:8.2f} µs/step   executor "
          f"{me * 1e3:7.3f} ms/step   overhead {(me - md) * 1e3:7.3f} ms/step   "
          f"ratio {me / md:8.0f}x   (min overhead {(min(e) - md) * 1e3:.3f} ms)")


def one_hour_recipe() -> dict[str, Any]:
    """≈ 1 simulated hour on config/sim.toml: valve routing, syringe transfers to waste,
    waits; no heating, so nothing depends on a hotplate watchdog."""
    cycle = [
        {"id": "route", "device": "sel_valve", "action": "move", "args": {"position": "waste"}},
        {"id": "flush", "device": "pump_dmc", "action": "transfer",
         "args": {"volume": "2 mL", "from": "res_dmc", "to": "waste", "flow": "20 mL/min"}},
        {"id": "settle", "wait": "585 s"},
    ]
    return {
        "schema": "labctl.recipe/1", "name": "one_simulated_hour", "version": "1",
        "description": "Benchmark: six flush cycles with waits, about one simulated hour.",
        "parameters": {}, "materials": {"DMC": {"name": "dimethyl carbonate",
                                                "location": "res_dmc"}},
        "steps": [
            {"id": "init", "device": "pump_dmc", "action": "initialize", "idempotent": True},
            {"id": "cycles", "repeat": 6, "steps": cycle},
        ],
    }


async def simulated_hour(data_dir: Path) -> tuple[float, float, str]:
    from labctl.bench import Bench
    from labctl.config import load_config

    cfg = load_config(ROOT / "config" / "sim.toml")
    cfg.devices = {n: d for n, d in cfg.devices.items() if n in ("pump_dmc", "sel_valve")}
    bench = Bench(cfg, data_dir=data_dir, time_scale=1000)
    await bench.start()
    try:
        plan = bench.plan(one_hour_recipe())
        t0 = time.perf_counter()
        run_id = await bench.submit(plan, instigator="operator:bench")
        result = await bench.wait(run_id)
        wall = time.perf_counter() - t0
    finally:
        await bench.close()
    return wall, float(plan.estimated_s), str(result["status"])


async def main() -> None:
    print(f"executor overhead, {N_STEPS} trivial steps, median of {RUNS} runs")
    with tempfile.TemporaryDirectory(dir=ROOT) as d:
        await overhead(Path(d), "the repository's disk (fsync)")
    if SHM_AVAILABLE:
        with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
            await overhead(Path(d), "tmpfs /dev/shm")
    print("one simulated hour at time_scale 1000 (config/sim.toml: pump_dmc, sel_valve)")
    walls = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(3):
            wall, est, status = await simulated_hour(Path(d) / f"r{i}")
            walls.append(wall)
            print(f"  run {i + 1}: {wall:6.2f} s wall for {est:.0f} s simulated ({status})")
    print(f"  median {statistics.median(walls):.2f} s wall (ideal {3600 / 1000:.2f} s)")


if __name__ == "__main__":
    asyncio.run(main())

"""labctl's executor against Bluesky's RunEngine on the same 1,000-step move-and-read sequence
(prints figures, asserts nothing).

- Bluesky: `RunEngine` on `ophyd.sim` devices (`motor` and `det`, both instantaneous): per
  step `bps.mv(motor, x)` then `bps.trigger_and_read([det, motor])`, inside one run.
- labctl: the `Executor` on an in-process device with no I/O that moves and reads at once;
  per step one action that moves it and reads it back. The executor's journal (fsync'd
  before each step starts) is included — on the repository's disk and on tmpfs.

The overhead per step is the framework's time minus the time of the same device calls made
directly, in a plain loop; the ratio compares the two overheads. Medians of several runs.

Bluesky and ophyd are an optional dependency (`pip install -e '.[bench]'`), not a runtime
one.

    .venv/bin/python bench/compare_bluesky.py [--steps 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labctl.clock import ScaledClock  # noqa: E402
from labctl.device import Device, DeviceInfo, DeviceSpec, DeviceState, DeviceStatus  # noqa: E402
from labctl.executor import Executor  # noqa: E402
from labctl.recipe.plan import Plan, PlannedStep  # noqa: E402
from labctl.run_machine import RunMachine  # noqa: E402
from labctl.store import RunRecord  # noqa: E402


# --------------------------------------------------------------------------- Bluesky
def bluesky_available() -> str | None:
    """None when bluesky and ophyd import, else why not."""
    try:
        import bluesky  # noqa: F401
        import ophyd  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def bluesky_direct(n: int) -> float:
    """The same device calls without the RunEngine: seconds per step."""
    from ophyd.sim import det, motor

    t0 = time.perf_counter()
    for i in range(n):
        motor.set(i % 10).wait()
        det.trigger().wait()
        det.read()
        motor.read()
    return (time.perf_counter() - t0) / n


def bluesky_run_engine(re: Any, n: int) -> float:
    """One run of n move-and-read steps through the RunEngine: seconds per step."""
    import bluesky.plan_stubs as bps
    from ophyd.sim import det, motor

    def plan() -> Any:
        yield from bps.open_run()
        for i in range(n):
            yield from bps.mv(motor, i % 10)
            yield from bps.trigger_and_read([det, motor])
        yield from bps.close_run()

    t0 = time.perf_counter()
    re(plan())
    return (time.perf_counter() - t0) / n


# --------------------------------------------------------------------------- labctl
class InstantStage(Device):
    """An in-process positioner with a reading: moves and reads at once, no I/O."""

    capabilities: ClassVar[tuple[str, ...]] = ("stage",)
    protocol: ClassVar[str] = "none (in-process)"

    def __init__(self) -> None:
        super().__init__(DeviceSpec(name="stage", driver="instant-stage"))
        self.x = 0.0

    async def connect(self) -> None:
        return None

    async def identify(self) -> DeviceInfo:
        return DeviceInfo(model="instant stage")

    async def status(self) -> DeviceStatus:
        return DeviceStatus(DeviceState.IDLE, {"x": self.x})

    async def safe_state(self) -> None:
        return None

    async def move(self, x: float) -> None:
        self.x = x

    async def read(self) -> dict[str, float]:
        return {"x": self.x, "det": 1.0}


class MoveAndRead:
    """The action of every step: move the stage, read it back (the reading is the step's
    result, journaled with it)."""

    async def run(self, device: InstantStage, args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        await device.move(args["x"])
        return await device.read()


def bench_plan(args: list[dict[str, Any]]) -> Plan:
    """A plan of `move_and_read` steps, one per args dict, in the planner's own types."""
    steps = [PlannedStep(id=f"s{i}", path=f"steps[{i}]", kind="action", device="stage",
                         action="move_and_read", args=a, idempotent=True)
             for i, a in enumerate(args)]
    return Plan(name="move_and_read", version="1", description="", recipe={"name": "move_and_read"},
                parameters={}, sha256="0" * 64, steps=steps, estimated_s=0.0, materials=[],
                material_effects=[])


async def labctl_direct(n: int) -> float:
    stage = InstantStage()
    t0 = time.perf_counter()
    for i in range(n):
        await stage.move(float(i % 10))
        await stage.read()
    return (time.perf_counter() - t0) / n


async def labctl_executor(n: int, data_dir: Path) -> float:
    stage = InstantStage()
    plan = bench_plan([{"x": float(i % 10)} for i in range(n)])
    rec = RunRecord.create(data_dir, f"bench-{time.monotonic_ns()}")
    machine = RunMachine(journal=lambda info: rec.journal.append("transition", **info))
    await machine.request("validate")
    await machine.request("validated")
    action = MoveAndRead()
    ex = Executor(plan, {"stage": stage}, clock=ScaledClock(1000), record=rec, machine=machine,
                  actions=lambda dev, name: action)
    t0 = time.perf_counter()
    state = await ex.execute()
    per_step = (time.perf_counter() - t0) / n
    rec.close()
    if str(state) != "completed":
        raise RuntimeError(f"the executor run ended {state}")
    return per_step


# --------------------------------------------------------------------------- figures
def line(label: str, direct: list[float], framework: list[float]) -> float:
    d, f = statistics.median(direct), statistics.median(framework)
    overhead = f - d
    print(f"  {label:<40} direct {d * 1e6:8.2f} µs/step   framework {f * 1e3:7.3f} ms/step"
          f"   overhead {overhead * 1e3:7.3f} ms/step")
    return overhead


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5, help="runs of each, medians printed")
    args = ap.parse_args()
    n, runs = args.steps, args.runs
    print(f"{n} move-and-read steps, median of {runs} runs")

    overheads: dict[str, float] = {}
    for label, where in (("labctl executor, journal on disk", ROOT),
                         ("labctl executor, journal on tmpfs", Path("/dev/shm"))):
        if not where.is_dir():
            continue
        direct, framework = [], []
        with tempfile.TemporaryDirectory(dir=where) as d:
            for _ in range(runs):
                direct.append(asyncio.run(labctl_direct(n)))
                framework.append(asyncio.run(labctl_executor(n, Path(d))))
        overheads[label] = line(label, direct, framework)

    missing = bluesky_available()
    if missing is not None:
        print(f"\nBluesky is not installed ({missing}): install the optional bench extra,\n"
              "    .venv/bin/pip install -e '.[bench]'\nand run this again for the comparison.")
        return 1
    from bluesky import RunEngine

    re = RunEngine({})
    direct, framework = [], []
    for _ in range(runs):
        direct.append(bluesky_direct(n))
        framework.append(bluesky_run_engine(re, n))
    bs = line("Bluesky RunEngine, ophyd.sim motor + det", direct, framework)
    for label, ov in overheads.items():
        print(f"  ratio of overheads, Bluesky / {label}: {bs / ov:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""TUI refresh cost: the main screen fed 10 updates a second (every device reading, a new
step state, event lines and plot points changing), headless at 120x40 and 80x24.

Prints the time the app spends per refresh tick (median, p99, max over several runs) and
how many table cells it touched per tick, next to the 100 ms budget of a 10 Hz refresh. A
figure well under the budget means the screen keeps up without dropping frames; touched
cells near the number that changed mean updates in place (no redraw of the whole table).
Figures only; nothing here is asserted.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from pathlib import Path
from typing import Any

from labctl.tui import LabctlApp
from labctl.tui.backend import BenchBackend, Problem
from labctl.tui.model import DeviceRow, EventLine, Measurement, RunView, StepRow
from labctl.tui.widgets import DevicesPanel

RATE_HZ = 10.0
SECONDS = 4.0
RUNS = 3
DEVICES = 10


class SyntheticBackend(BenchBackend):
    """A bench that changes everything RATE_HZ times a second."""

    def __init__(self) -> None:
        super().__init__(Path("recipes"))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        v = self.view
        v.bench_id, v.connected, v.state = "bench-tui", True, "running"
        v.connection = "synthetic"
        v.run = RunView("run-1", recipe="synthetic", state="running", steps_total=40,
                        steps=[StepRow(f"step{i}", device=f"dev{i % DEVICES}", action="move")
                               for i in range(40)])
        v.devices = {f"dev{i}": DeviceRow(f"dev{i}") for i in range(DEVICES)}
        v.measurement = Measurement("run-1", "sweep", "cv")
        self._task = asyncio.create_task(self._feed())

    async def _feed(self) -> None:
        n = 0
        while True:
            v = self.view
            now = time.time()
            for i, row in enumerate(v.devices.values()):
                row.state, row.updated = "busy", now
                row.readings = {"plunger_volume_l": (n + i) % 50 * 1e-4, "valve_port": i % 6,
                                "temperature_c": 20 + (n % 100) / 10}
            assert v.run is not None
            step = v.run.steps[n % len(v.run.steps)]
            step.state = "done" if step.state == "running" else "running"
            v.run.fraction = (n % 100) / 100
            v.run.elapsed_s, v.run.eta_s = n / RATE_HZ, 100 - n / RATE_HZ
            for k in range(10):
                e = (n * 10 + k) * 0.001
                v.measurement.add(e, math.sin(e))  # type: ignore[union-attr]
            v.log(EventLine("00:00:00", "step_started", f"update {n}"))
            v.touch("devices", "run", "plot")
            n += 1
            await asyncio.sleep(1 / RATE_HZ)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()

    async def validate(self, recipe: Path, parameters: dict[str, Any]) -> list[Problem]:
        return []

    async def submit(self, recipe: Path, parameters: dict[str, Any]) -> str:
        return "run-1"

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def abort(self) -> None: ...

    async def estop(self) -> None: ...

    async def cancel(self, run_id: str) -> None: ...

    async def run_record(self, run_id: str | None = None) -> dict[str, Any]:
        return {}


async def one_run(size: tuple[int, int]) -> tuple[list[float], list[int]]:
    app = LabctlApp(SyntheticBackend(), refresh_hz=RATE_HZ)
    ticks: list[float] = []
    cells: list[int] = []
    async with app.run_test(size=size) as pilot:
        await pilot.pause(0.5)
        panel = app.query_one(DevicesPanel)
        counter = [0]
        real_update = panel.update_cell

        def counting(*a: Any, **kw: Any) -> None:
            counter[0] += 1
            real_update(*a, **kw)

        panel.update_cell = counting  # type: ignore[method-assign]
        real_draw = app._draw

        def timed(force: bool = False) -> None:
            counter[0] = 0
            t0 = time.perf_counter()
            real_draw(force)
            ticks.append(time.perf_counter() - t0)
            cells.append(counter[0])

        app._draw = timed  # type: ignore[method-assign]
        await pilot.pause(SECONDS)
    return ticks, cells


async def render_cost(size: tuple[int, int]) -> list[float]:
    """A frame also costs Textual's compositing: a full-screen render, as a repaint does."""
    app = LabctlApp(SyntheticBackend(), refresh_hz=RATE_HZ)
    out: list[float] = []
    async with app.run_test(size=size) as pilot:
        await pilot.pause(0.5)
        for _ in range(30):
            t0 = time.perf_counter()
            app.screen._compositor.render_update(full=True)
            out.append(time.perf_counter() - t0)
            await pilot.pause(1 / RATE_HZ)
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def main() -> None:
    budget_ms = 1000 / RATE_HZ
    for size in ((120, 40), (80, 24)):
        all_ticks: list[float] = []
        all_cells: list[int] = []
        for _ in range(RUNS):
            ticks, cells = asyncio.run(one_run(size))
            all_ticks += ticks
            all_cells += cells
        renders = asyncio.run(render_cost(size))
        ms = [t * 1000 for t in all_ticks]
        print(f"{size[0]}x{size[1]}: {len(ms)} ticks at {RATE_HZ:.0f} updates/s "
              f"({RUNS} runs of {SECONDS:.0f} s): update per tick median "
              f"{statistics.median(ms):.2f} ms,"
              f" p99 {pct(ms, 99):.2f} ms, max {max(ms):.2f} ms (budget {budget_ms:.0f} ms);"
              f" full-screen render median {statistics.median(renders) * 1000:.2f} ms,"
              f" p99 {pct(renders, 99) * 1000:.2f} ms;"
              f" device cells touched per tick median {statistics.median(all_cells):.0f}"
              f" (of {DEVICES * 3}; {DEVICES} readings change each update)")


if __name__ == "__main__":
    main()

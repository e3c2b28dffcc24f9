"""Time-scale floors (issue 12, item 14): at high time scales every timeout that covers
serial traffic keeps a wall-clock floor, so the simulated bench works instead of failing
its steps on their own exchanges.

`labctl run` is the real CLI on the default simulated bench (config/sim.toml: simulators
in-process on pseudo-terminals, drivers over real bytes).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from labctl.clock import Deadline, RealClock, ScaledClock, wall_budget
from tests.test_ika import Bench as IkaBench
from tests.test_ika import make_bench as make_ika_bench
from tests.test_ika import wait_for

ROOT = Path(__file__).resolve().parent.parent
LABCTL = [sys.executable, "-m", "labctl"]
pytestmark = pytest.mark.timeout(240)


def run_recipe(recipe: str, scale: float, data: Path) -> tuple[int, dict[str, Any], str]:
    out = subprocess.run([*LABCTL, "run", f"recipes/{recipe}", "--time-scale", f"{scale:g}",
                          "--data-dir", str(data), "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=200)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return out.returncode, result, out.stderr


def test_conductivity_recipe_completes_at_time_scale_30000(tmp_path: Path) -> None:
    """At 30000x the salt step's 600 s timeout was 20 ms of wall time: shorter than the
    dispenser's own serial exchanges, so every run failed there."""
    code, result, err = run_recipe("electrolyte_conductivity.json", 30000, tmp_path)
    assert code == 0, (result, err)
    assert result["status"] == "completed"
    assert not result.get("errors")
    assert any(f.get("value") is not None for f in result.get("figures_of_merit") or [])
    meta = json.loads(next(tmp_path.glob("*/metadata.json")).read_text())
    hotplate = meta["instruments"]["hotplate"]
    # even the hotplate's longest watchdog (1500 s) is 50 ms at 30000x: no keep-alive can
    # promise that, so the simulated hotplate ran without one, and the record says so
    assert hotplate["watchdog_armed_s"] is None
    assert "not armed" in hotplate["watchdog_note"] and "30000" in hotplate["watchdog_note"]


async def test_a_fast_simulated_hotplate_survives_an_event_loop_hiccup() -> None:
    """At 30000x the sim bench's 600 s watchdog was 20 ms of wall time: one hiccup of the
    host's event loop (a journal fsync, an analysis; here a 0.2 s block) tripped it and the
    next stir failed. The driver now leaves such a watchdog unarmed on a simulated bench."""
    b = await make_ika_bench(30000)
    try:
        dev = b.driver({"watchdog": "600 s"})
        await dev.connect()
        await asyncio.sleep(0.1)  # the keep-alive runs, as during a run
        time.sleep(0.2)  # noqa: ASYNC251  (on purpose: the loop blocked, as a slow fsync does)
        await dev.set_speed(300)  # raised DeviceFault "the motor did not start" (tripped)
        snap = b.sim.snapshot()
        assert snap["watchdog_tripped"] == 0 and snap["error"] is None
        assert dev.watchdog_s is None and dev.watchdog_note is not None
        assert "not armed" in dev.watchdog_note
        await dev.safe_state()
    finally:
        await close_ika_bench(b)


async def test_a_watchdog_too_short_in_wall_time_is_lengthened_within_its_range() -> None:
    """At 500x a 600 s watchdog is 1.2 wall s: armed 1000 s (2 wall s) instead; at 100x
    (the default sim bench) it is armed as configured."""
    for scale, armed in ((500, 1000.0), (100, 600.0)):
        b = await make_ika_bench(scale)
        try:
            dev = b.driver({"watchdog": "600 s"})
            await dev.connect()
            sim = b.sim
            await wait_for(lambda sim=sim: sim.snapshot()["watchdog_mode"] == 1)
            assert sim.snapshot()["watchdog_s"] == armed
            assert dev.describe()["watchdog_armed_s"] == armed
        finally:
            await close_ika_bench(b)


async def close_ika_bench(b: IkaBench) -> None:
    for d in b.drivers:
        await d.close()
    await b.pool.close_all()
    await b.served.close()


def test_wall_budget_floors_a_scaled_timeout_but_never_lengthens_a_real_one() -> None:
    fast = ScaledClock(30000)
    assert wall_budget(fast, 600.0, 10.0) == 10.0  # not 0.02 s
    assert wall_budget(fast, 3.0, 10.0) == 3.0  # capped at its own real-time length
    assert wall_budget(RealClock(), 600.0, 10.0) == 600.0  # scale 1: unchanged
    assert wall_budget(ScaledClock(10), 600.0, 10.0) == 60.0  # scaled time is above floor
    deadline = Deadline(fast, 600.0, 10.0)
    assert not deadline.expired() and 9.0 < deadline.left_wall() <= 10.0

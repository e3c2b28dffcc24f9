"""Two conductivity screens at once on the simulated bench's vial block (config/sim.toml,
every instrument a simulator on a pseudo-terminal): each run gets its own vial, both share
the block stirrer at one set-point, the run that finishes first leaves the block stirring
under the other's sample (journalled as `left_running`), and the last run switches it off."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from labctl.bench import Bench
from labctl.config import load_config

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "conductivity_screen.json"
pytestmark = pytest.mark.timeout(300)


def _in_step(events: list[dict], step: str) -> bool:
    started = [e for e in events if e.get("event") == "step_started" and e.get("step") == step]
    ended = [e for e in events if e.get("event") in ("step_finished", "step_failed")
             and e.get("step") == step]
    return bool(started) and not ended


async def test_block_shared_by_two_runs_is_stopped_by_the_last(tmp_path: Path) -> None:
    bench = Bench(load_config(ROOT / "config" / "sim.toml"), data_dir=tmp_path / "runs",
                  time_scale=100, max_concurrent=2)
    await bench.start()
    try:
        first = await bench.submit(RECIPE, {"salt_molality": "0.8 mol/kg"})
        second = await bench.submit(RECIPE, {"salt_molality": "1.2 mol/kg"})
        vials = [bench.tickets[r].plan.parameters_typed["vial"]["value"] for r in (first, second)]
        assert vials[0] != vials[1], "two runs were given one vial"
        world = bench.instruments.simulation.world  # type: ignore[union-attr]
        sims = bench.instruments.simulation.simulators  # type: ignore[union-attr]
        # watch the second run's vial while its mix runs after the first run has ended
        seen_after_first: list[float] = []
        done = asyncio.ensure_future(asyncio.gather(bench.wait(first), bench.wait(second)))
        while not done.done():
            if bench.tickets[first].ended and _in_step(
                    bench.store.open(second).events(), "mix"):
                seen_after_first.append(world.vessel(vials[1]).stir_rpm)
            await asyncio.sleep(0.02)
        results = done.result()
        assert [r["status"] for r in results] == ["completed", "completed"]
        assert seen_after_first, "the second run's mix did not outlast the first run"
        assert set(seen_after_first) == {600}, (
            "the first run's end stopped the block under the second run's sample")
        left = [e for e in bench.store.open(first).events()
                if e.get("event") == "record" and e.get("kind") == "left_running"]
        assert left and all(second in e["shared_with"] for e in left)
        assert not [e for e in bench.store.open(second).events()
                    if e.get("event") == "record" and e.get("kind") == "left_running"]
        assert sims["block_stirrer"].is_safe(), "the last run left the block on"
        assert all(world.vessel(v).stir_rpm == 0 for v in vials)
        # each vial holds its own run's electrolyte (measured, not the neighbour's)
        cond = [next(f["value"] for f in r["figures_of_merit"]
                     if f["name"] == "ionic_conductivity_mS_cm") for r in results]
        assert cond[0] != pytest.approx(cond[1], rel=1e-3)
    finally:
        await bench.close()

"""Plan estimates come from the instruments' models where the physics is declared in the
bench config (the Quantos dosing rate, the EmStat cell's capacity), and a short recipe's
estimate is within 20 % of what it takes on the simulated bench, judged on the bench's
simulated clock (never the wall clock). bench/estimates.py prints the table for every
shipped recipe."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from labctl.bench import Bench
from labctl.config import BenchConfig, load_config
from labctl.recipe import build_plan

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


def sim_cfg(**dispenser_options: Any) -> BenchConfig:
    cfg = load_config(ROOT / "config" / "sim.toml")
    cfg.devices["dispenser"].simulator.options.update(dispenser_options)
    return cfg


def step(plan: Any, step_id: str) -> Any:
    return next(s for s in plan.leaves() if s.id == step_id)


def test_dosing_estimate_follows_the_declared_dosing_rate() -> None:
    recipe = RECIPES / "formulate_electrolyte.json"
    slow = step(build_plan(recipe, {}, sim_cfg(dose_s_per_mg=0.6)), "salt")
    usual = step(build_plan(recipe, {}, sim_cfg()), "salt")
    mg = usual.args["mass_g"] * 1000
    # 0.3 s/mg is the Quantos simulator's default rate: the dose alone takes mg * 0.3 s
    assert usual.estimated_s >= mg * 0.3
    assert slow.estimated_s - usual.estimated_s == pytest.approx(mg * 0.3, rel=1e-6)


def test_cycling_estimate_runs_the_cell_to_its_cut_offs() -> None:
    recipe = RECIPES / "galvanostatic_cycling.json"
    cfg = load_config(ROOT / "config" / "sim.toml")
    plan = build_plan(recipe, {}, cfg)
    cycling = step(plan, "cycling")
    phases = cycling.args["phases"]
    ceiling = cycling.args["n_cycles"] * sum(p["max_time_s"] for p in phases)
    assert cycling.estimated_s < 0.9 * ceiling  # the cut-offs end the cc phases early
    big = load_config(ROOT / "config" / "sim.toml")
    big.devices["potentiostat"].simulator.options["capacity"] = "0.7 mA*h"
    smaller = step(build_plan(recipe, {"nominal_capacity": "0.7 mA*h"}, big), "cycling")
    # same C-rate on a smaller declared cell: the same share of max_time, but rests stay
    assert smaller.estimated_s == pytest.approx(cycling.estimated_s, rel=0.1)
    short = load_config(ROOT / "config" / "sim.toml")
    short.devices["potentiostat"].simulator.options["capacity"] = "0.5 mA*h"
    half = step(build_plan(recipe, {}, short), "cycling")  # C/2 of 1 mAh on 0.5 mAh
    assert half.estimated_s < 0.7 * cycling.estimated_s


async def _simulated_duration(cfg: BenchConfig, recipe: Path, params: dict[str, Any],
                              tmp: Path) -> tuple[float, str]:
    """Simulated seconds from the first step's start to the run's end (bench clock)."""
    bench = Bench(cfg, data_dir=tmp / "runs", time_scale=cfg.bench.time_scale)
    await bench.start()
    clock = bench.instruments.clock
    marks: dict[str, float] = {}

    async def watch() -> None:
        async for ev in bench.subscribe():
            if ev.get("event") == "step_started" and "first" not in marks:
                marks["first"] = clock.monotonic()
            if ev.get("event") == "run_finished":
                marks["end"] = clock.monotonic()
                return

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0)
        run_id = await bench.submit(recipe, params)
        result = await bench.wait(run_id)
        await asyncio.wait_for(watcher, 30)
    finally:
        watcher.cancel()
        await bench.close()
    return marks["end"] - marks["first"], str(result.get("status"))


async def test_short_recipe_estimate_within_20_percent_of_simulated_time(
        tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / "sim.toml")
    cfg.bench.time_scale = 50.0  # the plan counts serial exchanges at the bench's scale
    recipe = RECIPES / "formulate_electrolyte.json"
    params = {"mixing_time": "1 min"}
    plan = build_plan(recipe, params, cfg)
    simulated, status = await _simulated_duration(cfg, recipe, params, tmp_path)
    assert status == "completed"
    ratio = plan.estimated_s / simulated
    assert 0.8 <= ratio <= 1.2, (plan.estimated_s, simulated)
